"""Markdown table of a crop-suite run (``bench/dev_volumes.py --crops``): one row per crop.

    python bench/crops_table.py runs/crops/crops.json [--before runs/crops_before/crops.json]

Columns: Dice per side against the full volume's labels inside the crop (the side's mL inside it), the
share of each side labelled as the other, Dice against the reference where the volume has one, the QC
verdict, whether its field-of-view flag is raised and whether it says a side (or the lung at a cut) is
undecided.  ``--before`` adds the Dice of an earlier run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cell(f: dict, side: str) -> str:
    if f[f"ref_{side}_ml"] < 50:
        return f"– ({f[f'ref_{side}_ml']:.0f} mL)"
    return f"{f[f'dice_{side}']:.3f} ({f[f'ref_{side}_ml']:.0f} mL)"


def table(rows: dict, before: dict | None = None) -> str:
    head = (
        "| volume / crop | right vs full (mL) | left vs full (mL) | R as L | L as R | vs reference R, L | QC | FOV "
        "| side undecided |"
    )
    if before:
        head += " before: R, L |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, row in rows.items():
        f = row["full"]
        ref = row.get("reference")
        fov = any("field of view cuts" in x for x in row["qc_flags"])
        undecided = any("undecided" in x or "could not be decided" in x for x in row["qc_flags"])
        line = (
            f"| {key} | {_cell(f, 'right')} | {_cell(f, 'left')} | "
            f"{f['right_as_other']:.1%} | {f['left_as_other']:.1%} | "
            + (f"{ref['dice_right']:.3f}, {ref['dice_left']:.3f}" if ref else "")
            + f" | {'ok' if row['qc_ok'] else 'flagged'} | {'yes' if fov else 'no'} | {'yes' if undecided else 'no'} |"
        )
        if before:
            b = before.get(key, {}).get("full")
            line += f" {b['dice_right']:.3f}, {b['dice_left']:.3f} |" if b else " |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("crops_json")
    ap.add_argument("--before")
    args = ap.parse_args(argv)
    rows = json.loads(Path(args.crops_json).read_text())
    before = json.loads(Path(args.before).read_text()) if args.before else None
    print(table(rows, before))


if __name__ == "__main__":
    main()
