"""Papers are cited by name (docs/references.md), never by the numbered folder labels the
papers were once filed under ("seed" followed by a zero-padded number). Random seeds of runs
("seed 0", "--seeds 0,1,2", "seeds 0-2") are not citations and are not flagged."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: a folder label: "seed" or "seeds", an optional space, hyphen, underscore or slash, then a
#: zero-padded number (one or two leading zeros and a digit, no digit after it)
LABEL = re.compile(r"\bseeds?[ _/-]?0{1,2}[0-9](?![0-9])", re.IGNORECASE)

#: files that are never text
SKIP_SUFFIXES = {".sqlite", ".png", ".safetensors"}


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to scan")
    return [ROOT / p for p in out.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file (or one deleted from the working tree)."""
    if path.suffix.lower() in SKIP_SUFFIXES or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _labels(paths: list[Path]) -> list[str]:
    hits = []
    for path in paths:
        text = _text(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for m in LABEL.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in {line.strip()[:120]!r}")
    return hits


def _in_results(path: Path) -> bool:
    return path.relative_to(ROOT).parts[0] == "results"


def test_label_pattern_flags_labels_and_not_random_seeds():
    # built by concatenation so that this file itself carries no label
    labels = ["seed " + "000", "Seed " + "004's Table 1", "seeds " + "000/002", "(seed " + "004 Table A3)",
              "seed-" + "002", "seed" + "003", "seed " + "01"]
    for text in labels:
        assert LABEL.search(text), text
    random_seeds = ["seed 0", "seed 1", "seeds 0-2", "--seeds 0,1,2", "seeds 0, 1 and 2", "seed=0",
                    "(seed 0)", "seed 2 of 3", "seeds: [0, 1, 2]", "split_seed", "seed 10", "seed 100"]
    for text in random_seeds:
        assert not LABEL.search(text), text


def test_no_tracked_file_cites_a_paper_by_folder_label():
    hits = _labels([p for p in _tracked() if not _in_results(p)])
    assert not hits, ("cite the paper by name (docs/references.md), not by its folder label:\n"
                      + "\n".join(hits))


def test_no_committed_result_file_cites_a_paper_by_folder_label():
    hits = _labels([p for p in _tracked() if _in_results(p)])
    assert not hits, ("regenerate these result files with the current code:\n" + "\n".join(hits))
