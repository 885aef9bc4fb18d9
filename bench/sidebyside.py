"""The side-by-side lines: sidecar's row-mode legs, and E-Maj's legs (--emaj), against the
untracked baseline and against each other, from samples of the same interleaved repeats."""

from __future__ import annotations

import math

from .harness import Line, Samples, seconds


def ratio_or_none(s: Samples, leg: str, base: str) -> float | None:
    return s.ratio(leg, base)[0] if s.has(leg) and s.has(base) else None


def bulk_lines(s: Samples, cpu: Samples, undo: Samples, sizes: dict[str, str], with_w3: bool) -> list[Line]:
    """W1 (row mode, E-Maj) and W3 (E-Maj's rollbacks) lines. s: write seconds by 'op/mode';
    undo: undo seconds by op ('update'), 'op/row', 'op/emaj', 'op/emaj-logged'."""
    out: list[Line] = []
    for op in ("update", "insert", "delete"):
        base = f"untracked {op.upper()} {seconds(s.median(f'{op}/untracked'))}"
        emaj = s.has(f"{op}/emaj")
        for mode, name in (("tagged-row", f"tagged {op.upper()} {sizes[op]}, row mode, vs untracked"),
                           ("untagged-row", f"untagged {op.upper()} {sizes[op]}, row mode, tracked table")):
            if not s.has(f"{op}/{mode}"):
                continue
            out.append(Line("W1", name, *s.ratio(f"{op}/{mode}", f"{op}/untracked"),
                            op="<=" if mode == "untagged-row" else None, target=1.10 if mode == "untagged-row" else None,
                            baseline=base, cpu=ratio_or_none(cpu, f"{op}/{mode}", f"{op}/untracked"),
                            vs_emaj=ratio_or_none(s, f"{op}/{mode}", f"{op}/emaj") if mode != "untagged-row" else None))
        if emaj:
            out.append(Line("W1", f"E-Maj logging {op.upper()} {sizes[op]} vs untracked",
                            *s.ratio(f"{op}/emaj", f"{op}/untracked"), baseline=base + "; table in a started group",
                            cpu=ratio_or_none(cpu, f"{op}/emaj", f"{op}/untracked")))
    if not with_w3:
        return out
    for op in ("update", "insert", "delete"):
        base = f"untracked {op.upper()} {seconds(s.median(f'{op}/untracked'))}"
        both = Samples({k: v for k, v in (("base", s.values.get(f"{op}/untracked")),
                                          ("undo", undo.values.get(op)),
                                          ("row", undo.values.get(f"{op}/row")),
                                          ("emaj", undo.values.get(f"{op}/emaj")),
                                          ("logged", undo.values.get(f"{op}/emaj-logged"))) if v})
        if both.has("row"):
            out.append(Line("W3", f"undo of the tagged {op.upper()}, row mode (whole CLI)", *both.ratio("row", "base"),
                            baseline=base + f"; undo {seconds(both.median('row'))}",
                            vs_emaj=ratio_or_none(both, "row", "emaj")))
        if both.has("emaj"):
            if both.has("undo"):
                out.append(Line("W3", f"undo of the tagged {op.upper()} vs E-Maj's rollback (whole CLI)",
                                *both.ratio("undo", "emaj"), op="<=" if op == "update" else None,
                                target=1.0 if op == "update" else None,
                                baseline=f"emaj_rollback_group {seconds(both.median('emaj'))}, "
                                         f"undo {seconds(both.median('undo'))}",
                                vs_emaj=both.ratio("undo", "emaj")[0]))
            out.append(Line("W3", f"E-Maj emaj_rollback_group of the {op.upper()} vs untracked",
                            *both.ratio("emaj", "base"), baseline=base + "; not itself undoable"))
        if both.has("logged"):
            out.append(Line("W3", f"E-Maj emaj_logged_rollback_group of the {op.upper()} vs untracked",
                            *both.ratio("logged", "base"), baseline=base + "; logged: can be rolled back"))
    return out


def oltp_lines(s: Samples, cpu: Samples, what: str) -> list[Line]:
    """W2: row mode and E-Maj, TPS against untracked (with CPU per transaction) and against
    each other (the issue's targets: tagged TPS at least E-Maj's, CPU per transaction at most)."""
    out: list[Line] = []

    def us(leg: str) -> str:
        return f"{cpu.median(leg) * 1e6:.0f} us CPU/tx" if cpu.has(leg) else "CPU n/a"

    base = f"untracked {s.median('untracked'):.0f} tps, {us('untracked')}"
    emaj = s.has("emaj")
    for mode, name in (("tagged-row", "TPS tagged, row mode"),
                       ("untagged-row", "TPS untagged, row mode"), ("emaj", "TPS E-Maj (every write logged)")):
        if not s.has(mode):
            continue
        out.append(Line("W2", f"{what}: {name}", *s.ratio(mode, "untracked"), unit="%",
                        op=">=" if mode == "untagged-row" else None, target=0.97 if mode == "untagged-row" else None,
                        baseline=f"{us(mode)}; " + base, cpu=ratio_or_none(cpu, mode, "untracked"),
                        vs_emaj=ratio_or_none(s, mode, "emaj") if mode == "tagged-row" else None))
    if emaj and s.has("tagged-row"):
        out.append(Line("W2", f"{what}: TPS tagged (row mode) vs E-Maj", *s.ratio("tagged-row", "emaj"), unit="%",
                        op=">=", target=1.0, baseline=f"E-Maj {s.median('emaj'):.0f} tps",
                        vs_emaj=s.ratio("tagged-row", "emaj")[0]))
        if cpu.has("tagged-row") and cpu.has("emaj"):
            value, low, high = cpu.ratio("tagged-row", "emaj")
            if math.isfinite(value):
                out.append(Line("W2", f"{what}: server CPU per tagged transaction (row mode) vs E-Maj", value, low,
                                high, op="<=", target=1.0,
                                baseline=f"{us('tagged-row')} against E-Maj's {us('emaj')}", vs_emaj=value))
    return out
