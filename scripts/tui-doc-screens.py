#!/usr/bin/env python3
"""Copies the terminal client's snapshot screens into docs/tui.md.

Each ```text block in docs/tui.md that follows a line naming a snapshot file as
<!-- screen: NAME --> is replaced with that snapshot (crates/sotto/tests/snapshots/NAME).
Run after `SOTTO_UPDATE_SNAPSHOTS=1 cargo test -p sotto --test tui`.
"""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
doc = root / "docs" / "tui.md"
snapshots = root / "crates" / "sotto" / "tests" / "snapshots"
text = doc.read_text()
pattern = re.compile(r"(<!-- screen: (\S+) -->\n)```text\n.*?```\n", re.S)
text = pattern.sub(
    lambda m: m.group(1) + "```text\n" + (snapshots / m.group(2)).read_text().rstrip("\n") + "\n```\n",
    text,
)
doc.write_text(text)
