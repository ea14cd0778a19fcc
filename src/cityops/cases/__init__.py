"""The case loop (一网统管 / 数字城管): one event pool, dispatch, deadlines, supervision,
evaluation — GB/T 30428's seven steps, CJ/T 292 evaluation, the 12345 三率."""
