"""leaderboard.html: self-contained, its table and plots render in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pytest

from robustbench_er.engine.spec import AttackConfig, SweepConfig
from robustbench_er.jobs.sweep import run_sweep


@pytest.fixture(scope="module")
def html_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    run_sweep(SweepConfig(dataset="digits", defenses=["none", "none[epochs=3]"], attacks=[AttackConfig("fgsm"), AttackConfig("pgd", {"steps": 3})],
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


#: appended to a copy of the page: sort by a column the way a person would (a click on its
#: header), then leave the column's values, top to bottom, where --dump-dom shows them
CLICK_SORT = """<script>
window.addEventListener('load', () => {
  const th = Array.from(document.querySelectorAll('table th')).find(h => h.textContent.trim() === 'clean');
  th.click();
  const col = Array.from(th.parentNode.children).indexOf(th);
  const rows = Array.from(th.closest('table').tBodies[0].rows);
  document.body.dataset.sorted = rows.map(r => r.children[col].textContent.trim()).join('|');
  document.body.dataset.order = th.dataset.order;
});
</script>"""


def _browser() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):  # .ci/run installs it: a missing browser there is a failure
            pytest.fail("CI without chromium: .ci/run should have installed Debian's chromium")
        pytest.skip("no headless browser here: Debian's chromium package is not installed")
    return browser


def _chromium(browser: str, profile, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--hide-scrollbars", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=180)


def test_html_renders_sorts_and_draws_in_headless_chromium(html_out, tmp_path):
    browser = _browser()
    page = tmp_path / "sorted.html"
    page.write_text((html_out / "leaderboard.html").read_text().replace("</body>", CLICK_SORT + "</body>"))
    done = _chromium(browser, tmp_path / "p1", "--dump-dom", page.as_uri())
    dom = done.stdout
    assert "<table>" in dom and dom.count("<tr>") >= 3, done.stderr[-500:]
    shown = re.findall(r'<img[^>]*data-shown="1"', dom)
    assert len(shown) == len(list(html_out.glob("*.png"))) > 0  # every plot decoded and displayed
    # one click on "clean" sorts the rows ascending by it
    values = [float(v) for v in re.search(r'data-sorted="([^"]*)"', dom).group(1).split("|")]
    assert len(values) == 2 and values == sorted(values) and 'data-order="asc"' in dom
    # and on a screenshot of the page, the tables and the plots are drawn
    shot = tmp_path / "page.png"
    _chromium(browser, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1280,2400",
              (html_out / "leaderboard.html").as_uri())
    img = plt.imread(shot)[..., :3]
    gray = img.mean(axis=2)
    assert (gray < 0.9).mean() > 0.01  # ink: text, table borders, axes
    # the plots' coloured curves and heat maps: saturated pixels a text-and-table page has none of
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 0.3).sum() > 2000, (saturation > 0.3).sum()
    # table rules: long horizontal runs of the border grey (#ccc) in the upper part of the page
    border = (abs(img - 0.8).max(axis=2) < 0.03)
    assert (border.sum(axis=1) > 200).sum() >= 3
