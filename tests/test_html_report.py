"""leaderboard.html: self-contained, its table and plots render in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.jobs.sweep import run_sweep


@pytest.fixture(scope="module")
def html_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    run_sweep(SweepConfig(dataset="digits", defenses=["none"], attacks=[AttackConfig("fgsm"), AttackConfig("pgd", {"steps": 3})],
                          eps=[0.0, 0.1, 0.2], samples=40, out=out, progress=False,
                          defense_overrides={"none": {"epochs": 1}}))
    return out


class _Parse(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.heads: list[str] = []
        self.srcs: list[str] = []
        self.links: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows += 1
        if tag == "th":
            self._in_th = True
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_th:
            self.heads.append(data)


def test_html_is_self_contained_and_matches_the_markdown(html_out):
    text = (html_out / "leaderboard.html").read_text()
    p = _Parse()
    p.feed(text)
    assert p.links == []  # nothing fetched from anywhere
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs)
    assert len(p.srcs) == len(list(html_out.glob("*.png")))
    md = (html_out / "leaderboard.md").read_text()
    md_head = [c.strip() for c in re.search(r"^\| defense .*\|$", md, re.M).group(0).strip("|").split("|")]
    assert p.heads == md_head
    md_row = re.search(r"^\| none .*\|$", md, re.M).group(0)
    for cell in md_row.strip("|").split("|"):
        assert f"<td>{cell.strip()}</td>" in text or not cell.strip()
    assert re.search(r"Versions: .*torch \d", text)  # the versions that made it


def test_html_renders_in_headless_chromium(html_out, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless browser here: Debian's chromium package is not installed")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                           "--virtual-time-budget=3000", "--dump-dom", (html_out / "leaderboard.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert "<table>" in dom and dom.count("<tr>") >= 2, done.stderr[-500:]
    shown = re.findall(r'<img[^>]*data-shown="1"', dom)
    assert len(shown) == len(list(html_out.glob("*.png"))) > 0  # every plot decoded and displayed
