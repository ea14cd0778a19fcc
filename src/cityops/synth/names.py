"""Chinese place names for the synthetic city: roads, streets, communities, estates, facilities.

Names are drawn from fixed pools, so a seed always gives the same names. They imitate common
Chinese naming habits (a two-character stem plus a generic: 长江路, 青枫街, 翠湾巷, 平江街道,
金桥社区, 凤鸣花园) and are not meant to match any real place. Everything is vectorised:
callers ask for ``n`` unique names at once.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CN_DIGITS",
    "cn_number",
    "stems",
    "take",
    "unique_names",
]

# Arterials in Chinese cities are very often named after rivers, provinces, cities and civic
# words (长江路, 黄河路, 人民路, 解放路, 北京路); these stems go to the arterials first.
_CIVIC = (
    "长江",
    "黄河",
    "人民",
    "解放",
    "建设",
    "中山",
    "和平",
    "胜利",
    "东风",
    "青年",
    "新华",
    "友谊",
    "民主",
    "光明",
    "幸福",
    "团结",
    "文化",
    "工业",
    "北京",
    "上海",
    "南京",
    "杭州",
    "广州",
    "天津",
    "重庆",
    "武汉",
    "西安",
    "成都",
    "长春",
    "沈阳",
    "太湖",
    "珠江",
    "淮海",
    "汉江",
    "湘江",
    "昆仑",
    "泰山",
    "黄山",
    "华山",
    "衡山",
    "嵩山",
    "庐山",
    "峨眉",
    "天山",
    "燕山",
    "秦岭",
    "江南",
    "江北",
    "滨江",
    "滨河",
    "世纪",
    "时代",
    "科技",
    "创新",
    "振兴",
    "繁荣",
    "复兴",
    "兴业",
    "新城",
    "中华",
    "长安",
    "金陵",
    "姑苏",
    "吴中",
    "苏州",
    "无锡",
    "常州",
    "扬州",
)

# Two-character stems built from pleasant, common toponym characters (金桥, 翠湾, 丹泾...).
_FIRST = list(
    "金银玉翠青碧紫丹凤龙松竹梅兰桂枫柳桃杏荷春秋云霞星月虹泉溪湖山石川华锦瑞祥和泰安宁康福嘉永新明文德仁信益"
)
_SECOND = list("桥园苑湾塘港泾浦林亭台坊门庄岭坡池河洲岸城都晖光阳秀茂盛兴隆昌平晓苗圃渡滨")

CN_DIGITS = np.array(list("〇一二三四五六七八九"))


def cn_number(n: NDArray[np.int64]) -> NDArray[np.str_]:
    """Chinese numerals for 1..99 (一, 二, ..., 十, 十一, ..., 九十九), vectorised."""
    n = np.asarray(n, dtype=np.int64)
    if n.size and (n.min() < 1 or n.max() > 99):
        raise ValueError("cn_number covers 1..99")
    tens, ones = np.divmod(n, 10)
    tens_s = np.where(tens == 0, "", np.where(tens == 1, "十", np.char.add(CN_DIGITS[tens], "十")))
    ones_s = np.where(ones == 0, "", CN_DIGITS[ones])
    return np.char.add(tens_s.astype(str), ones_s.astype(str))


def stems(rng: np.random.Generator, *, civic_first: bool = False) -> NDArray[np.str_]:
    """All name stems in a seeded order (civic stems first when ``civic_first``)."""
    first = np.array(_FIRST)
    second = np.array(_SECOND)
    a = np.repeat(first, len(second))
    b = np.tile(second, len(first))
    pairs = np.char.add(a, b)[a != b]
    civic = np.array(_CIVIC)
    pairs = pairs[~np.isin(pairs, civic)]
    pairs = pairs[rng.permutation(len(pairs))]
    civic = civic[rng.permutation(len(civic))]
    return np.concatenate([civic, pairs]) if civic_first else np.concatenate([pairs, civic])


def unique_names(
    rng: np.random.Generator,
    n: int,
    suffixes: list[str],
    *,
    civic_first: bool = False,
    exclude: NDArray[np.str_] | None = None,
) -> NDArray[np.str_]:
    """``n`` distinct names ``stem + suffix``; numbered forms (青枫一路) once stems run out.

    Numbered generics (创新一路, 文化二巷) are a real naming habit, so running past the stem
    pool still gives plausible names rather than failing.
    """
    if n <= 0:
        return np.empty(0, dtype="<U12")
    pool = stems(rng, civic_first=civic_first)
    suf = np.array(suffixes)
    plain = np.char.add(np.repeat(pool, len(suf)), np.tile(suf, len(pool)))
    # Interleave by stem rather than by suffix so that the first names use many stems.
    plain = plain.reshape(len(pool), len(suf)).T.reshape(-1)
    candidates = plain
    if exclude is not None and len(exclude):
        candidates = candidates[~np.isin(candidates, exclude)]
    if len(candidates) < n:
        k = np.arange(1, 100)
        numbered = np.char.add(
            np.repeat(pool, len(k) * len(suf)),
            np.char.add(
                np.tile(np.repeat(cn_number(k), len(suf)), len(pool)),
                np.tile(suf, len(pool) * len(k)),
            ),
        )
        if exclude is not None and len(exclude):
            numbered = numbered[~np.isin(numbered, exclude)]
        candidates = np.concatenate([candidates, numbered])
    if len(candidates) < n:
        raise ValueError(f"name pool exhausted: asked for {n}, have {len(candidates)}")
    return candidates[:n]


def take(pool: NDArray[np.str_], start: int, n: int) -> NDArray[np.str_]:
    """``n`` distinct stems from ``pool`` from ``start`` on; past its end, numbered stems
    (金桥二, 金桥三 …), as new roads and estates are often named."""
    i = start + np.arange(n)
    plain = i < len(pool)
    j = np.maximum(i - len(pool), 0)
    numbered = np.char.add(pool[j % len(pool)], cn_number(np.minimum(j // len(pool) + 2, 99)))
    return np.where(plain, pool[np.minimum(i, len(pool) - 1)], numbered)
