/**
 * The page's words in Chinese (the default) and English. Chinese is the source of the keys, so
 * a message missing from English is a type error, not a blank on screen.
 */

export type Lang = "zh" | "en";

const zh = {
  "app.title": "cityops 城市运行",
  "app.subtitle": "数字底座 · 基础图层",
  "lang.switch": "English",
  "lang.switchTitle": "Switch to English",
  "panel.toggle": "图层",
  "panel.close": "收起面板",
  "panel.layers": "图层",
  "panel.noCollections": "服务器没有可显示的图层。",
  "panel.zoomHint": "放大地图以查看：{layers}（当前缩放 {zoom}，需 ≥ {min}）",
  "panel.count": "{n} 个",
  "panel.countTruncated": "显示 {n} / 共 {total} 个",
  "panel.countTruncatedUnknown": "显示前 {n} 个",
  "panel.countLoading": "已加载 {n} 个…",
  "panel.locked": "需登录",
  "panel.forbidden": "无权限",
  "panel.layerError": "加载失败",
  "legend.colourBy": "着色依据",
  "legend.unknown": "未知",
  "legend.before": "{y} 年以前",
  "legend.range": "{a}–{b} 年",
  "legend.since": "{y} 年及以后",
  "legend.floorsRange": "{a}–{b} 层",
  "legend.floorsFrom": "{a} 层及以上",
  "legend.floorsLow": "低层",
  "legend.floorsMid": "多层",
  "legend.floorsMidHigh": "中高层",
  "legend.floorsHigh": "高层",
  "area.district": "区",
  "area.street": "街道",
  "area.community": "社区",
  "area.other": "其他区域",
  "road.expressway": "快速路 / 高速",
  "road.arterial": "主干路",
  "road.secondary": "次干路",
  "road.branch": "支路",
  "road.river": "河流",
  "road.other": "其他道路",
  "auth.title": "登录",
  "auth.account": "账号",
  "auth.username": "用户名",
  "auth.password": "密码",
  "auth.submit": "登录",
  "auth.submitting": "正在登录…",
  "auth.signOut": "退出登录",
  "auth.signedInAs": "已登录：{name}",
  "auth.roles": "角色：",
  "auth.department": "部门：{department}",
  "auth.required": "部分图层需要登录后才能查看：{layers}",
  "auth.signInNow": "去登录",
  "auth.forbidden": "当前账号无权查看：{layers}",
  "auth.expired": "登录已过期，请重新登录。",
  "auth.badCredentials": "用户名或密码错误。",
  "auth.missing": "请填写用户名和密码。",
  "status.loading": "加载中…",
  "status.ok": "服务正常",
  "status.down": "服务器未连接",
  "status.retry": "重试",
  "status.dismiss": "关闭",
  "error.network": "无法连接服务器，请检查服务是否已启动（cityops serve）以及网络连接。",
  "error.unauthorized": "需要登录。",
  "error.forbidden": "当前账号无权访问。",
  "error.notFound": "请求的资源不存在。",
  "error.server": "服务器出错（HTTP {status}），请稍后重试或联系管理员。",
  "error.badRequest": "请求无效（HTTP {status}）。",
  "error.invalidResponse": "服务器返回的数据无法识别。",
  "error.collections": "无法获取图层列表：{message}",
  "error.layer": "图层“{layer}”加载失败：{message}",
  "error.webgl": "此浏览器无法显示地图（需要 WebGL）。",
  "popup.empty": "没有属性",
  "popup.layer": "图层：{layer}",
  "unit.metre": "米",
} as const;

export type MessageKey = keyof typeof zh;

const en: Record<MessageKey, string> = {
  "app.title": "cityops city operations",
  "app.subtitle": "Digital base · base layers",
  "lang.switch": "中文",
  "lang.switchTitle": "切换到中文",
  "panel.toggle": "Layers",
  "panel.close": "Collapse panel",
  "panel.layers": "Layers",
  "panel.noCollections": "The server has no layers to show.",
  "panel.zoomHint": "Zoom in to see: {layers} (zoom {zoom}, needs ≥ {min})",
  "panel.count": "{n}",
  "panel.countTruncated": "{n} of {total} shown",
  "panel.countTruncatedUnknown": "first {n} shown",
  "panel.countLoading": "{n} loaded…",
  "panel.locked": "sign in",
  "panel.forbidden": "no access",
  "panel.layerError": "failed",
  "legend.colourBy": "Colour by",
  "legend.unknown": "unknown",
  "legend.before": "before {y}",
  "legend.range": "{a}–{b}",
  "legend.since": "{y} and later",
  "legend.floorsRange": "{a}–{b} floors",
  "legend.floorsFrom": "{a}+ floors",
  "legend.floorsLow": "low-rise",
  "legend.floorsMid": "multi-storey",
  "legend.floorsMidHigh": "mid-high-rise",
  "legend.floorsHigh": "high-rise",
  "area.district": "District",
  "area.street": "Street (subdistrict)",
  "area.community": "Community",
  "area.other": "Other area",
  "road.expressway": "Expressway / motorway",
  "road.arterial": "Arterial",
  "road.secondary": "Secondary",
  "road.branch": "Branch",
  "road.river": "River",
  "road.other": "Other road",
  "auth.title": "Sign in",
  "auth.account": "Account",
  "auth.username": "Username",
  "auth.password": "Password",
  "auth.submit": "Sign in",
  "auth.submitting": "Signing in…",
  "auth.signOut": "Sign out",
  "auth.signedInAs": "Signed in as {name}",
  "auth.roles": "Roles: ",
  "auth.department": "Department: {department}",
  "auth.required": "Some layers need you to sign in: {layers}",
  "auth.signInNow": "Sign in",
  "auth.forbidden": "This account may not see: {layers}",
  "auth.expired": "Your session has expired: please sign in again.",
  "auth.badCredentials": "Wrong username or password.",
  "auth.missing": "Enter a username and a password.",
  "status.loading": "Loading…",
  "status.ok": "Server OK",
  "status.down": "Server unreachable",
  "status.retry": "Retry",
  "status.dismiss": "Dismiss",
  "error.network":
    "Cannot reach the server: check that it is running (cityops serve) and the network connection.",
  "error.unauthorized": "Sign-in required.",
  "error.forbidden": "This account is not allowed to see this.",
  "error.notFound": "Not found.",
  "error.server": "Server error (HTTP {status}): try again later or ask the administrator.",
  "error.badRequest": "Invalid request (HTTP {status}).",
  "error.invalidResponse": "The server answered with data the page does not understand.",
  "error.collections": "Could not load the list of layers: {message}",
  "error.layer": "Layer “{layer}” failed to load: {message}",
  "error.webgl": "This browser cannot show the map (WebGL is needed).",
  "popup.empty": "No properties",
  "popup.layer": "Layer: {layer}",
  "unit.metre": "m",
};

const messages: Record<Lang, Record<MessageKey, string>> = { zh, en };

/** Labels of well-known feature properties, in the order a popup lists them. */
const fieldLabels: Record<Lang, Record<string, string>> = {
  zh: {
    name: "名称",
    code: "编码",
    level: "级别",
    kind: "类型",
    address: "地址",
    use: "用途",
    structure: "结构",
    floors: "层数",
    height: "高度",
    year_built: "建成年份",
    households: "户数",
    population: "人口",
    estate: "小区",
    category: "类别",
    subtype: "子类",
    status: "状态",
    level_cn: "等级",
    class_cn: "类别",
    capacity: "容量（人）",
    width_m: "宽度（米）",
    length_m: "长度（米）",
    footprint_m2: "基底面积（平方米）",
    area_m2: "面积（平方米）",
    parent_code: "上级编码",
    standard_ref: "标准",
    id: "标识",
  },
  en: {
    name: "Name",
    code: "Code",
    level: "Level",
    kind: "Kind",
    address: "Address",
    use: "Use",
    structure: "Structure",
    floors: "Floors",
    height: "Height",
    year_built: "Year built",
    households: "Households",
    population: "Population",
    estate: "Estate",
    category: "Category",
    subtype: "Subtype",
    status: "Status",
    level_cn: "Class (Chinese)",
    class_cn: "Class (Chinese)",
    capacity: "Capacity (people)",
    width_m: "Width (m)",
    length_m: "Length (m)",
    footprint_m2: "Footprint (m²)",
    area_m2: "Area (m²)",
    parent_code: "Parent code",
    standard_ref: "Standard",
    id: "Id",
  },
};

/** Names of the fixed collections, used when the server gives no title in the page's language. */
const collectionNames: Record<Lang, Record<string, string>> = {
  zh: {
    areas: "行政区划",
    grids: "单元网格",
    buildings: "建筑",
    roads: "道路",
    components: "城市管理部件",
    pois: "公共服务设施",
    shelters: "应急避难场所",
  },
  en: {
    areas: "Administrative areas",
    grids: "Unit grids",
    buildings: "Buildings",
    roads: "Roads",
    components: "City-management components",
    pois: "Public-service facilities",
    shelters: "Emergency shelters",
  },
};

const roleNames: Record<Lang, Record<string, string>> = {
  zh: {
    citizen: "市民",
    grid_worker: "网格员",
    handler: "处置人员",
    dispatcher: "派遣员",
    supervisor: "监督中心",
    analyst: "分析员",
    admin: "管理员",
    monitor: "监测员",
  },
  en: {
    citizen: "Citizen",
    grid_worker: "Grid worker",
    handler: "Handler",
    dispatcher: "Dispatcher",
    supervisor: "Supervisor",
    analyst: "Analyst",
    admin: "Administrator",
    monitor: "Monitor",
  },
};

const STORAGE_KEY = "cityops.lang";
const listeners = new Set<(lang: Lang) => void>();

function storedLang(): Lang {
  try {
    return localStorage.getItem(STORAGE_KEY) === "en" ? "en" : "zh";
  } catch {
    // Storage can be disabled (private mode, policies): Chinese is the default anyway.
    return "zh";
  }
}

let current: Lang = storedLang();

export function getLang(): Lang {
  return current;
}

export function setLang(lang: Lang): void {
  current = lang;
  try {
    localStorage.setItem(STORAGE_KEY, lang);
  } catch {
    // Not remembered, still switched.
  }
  applyTranslations(document);
  for (const listener of listeners) listener(lang);
}

export function onLangChange(listener: (lang: Lang) => void): void {
  listeners.add(listener);
}

/** The message for `key`, with `{name}` placeholders filled from `vars`. */
export function t(key: MessageKey, vars: Record<string, string | number> = {}): string {
  return messages[current][key].replace(/\{(\w+)\}/g, (whole, name: string) =>
    name in vars ? String(vars[name]) : whole,
  );
}

export function fieldLabel(field: string): string | undefined {
  return fieldLabels[current][field];
}

/** Known fields first, in the dictionary's order: a stable popup layout. */
export function knownFieldOrder(): readonly string[] {
  return Object.keys(fieldLabels.zh);
}

/**
 * A collection's name in the page's language. The server titles layers "English (中文)" when
 * it has both: each language takes its half. Otherwise the fixed layers have names here, and a
 * custom layer keeps the operator's title.
 */
export function collectionName(id: string, serverTitle?: string): string {
  const both = serverTitle?.match(/^(.+?) \((.+)\)$/);
  if (both?.[1] && both[2]) return current === "zh" ? both[2] : both[1];
  return collectionNames[current][id] ?? serverTitle ?? id;
}

const levelKeys: Record<string, MessageKey> = {
  district: "area.district",
  street: "area.street",
  community: "area.community",
};

/** A property value in the page's language where it is a known code word (an area's level). */
export function valueLabel(field: string, value: string): string {
  // Areas say their level in `kind`; other layers use `kind` for other things.
  const key = field === "level" || field === "kind" ? levelKeys[value.toLowerCase()] : undefined;
  return key ? `${t(key)} (${value})` : value;
}

export function roleName(role: string): string {
  return roleNames[current][role] ?? role;
}

/**
 * Fill every element marked `data-i18n` (text), `data-i18n-placeholder`, `data-i18n-title`
 * and `data-i18n-aria-label` below `root`.
 */
export function applyTranslations(root: ParentNode): void {
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  document.title = t("app.title");
  const attrs: [string, string | null][] = [
    ["data-i18n", null],
    ["data-i18n-placeholder", "placeholder"],
    ["data-i18n-title", "title"],
    ["data-i18n-aria-label", "aria-label"],
  ];
  for (const [marker, target] of attrs) {
    for (const el of root.querySelectorAll<HTMLElement>(`[${marker}]`)) {
      const key = el.getAttribute(marker) as MessageKey;
      if (!(key in zh)) continue;
      if (target === null) el.textContent = t(key);
      else el.setAttribute(target, t(key));
    }
  }
}
