"""``leaderboard.html``: the leaderboard as one self-contained file to share.

No network and no external file: the plots are embedded as base64 PNGs, the table sorts by
any column with a few lines of inline JavaScript (numbers as numbers, ``–`` last), a flag's
details show on hover (``title``), and the command and versions that made the results are at
the bottom. Its tables are the Markdown leaderboard's (:func:`robustbench_er.report.tables.leaderboard_sections`).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from robustbench_er.report.tables import LEGEND, leaderboard_sections

SCRIPT = """
function sortBy(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const asc = th.dataset.order !== 'asc';
  th.parentNode.querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? 'asc' : 'desc';
  const key = tr => {
    const t = tr.children[col].textContent.replace('⚠', '').trim();
    const v = parseFloat(t);
    return isNaN(v) ? t : v;
  };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x !== typeof y) return typeof x === 'number' ? -1 : 1;
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
}
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[data-order=asc]::after { content: ' ▲'; } th[data-order=desc]::after { content: ' ▼'; }
td:first-child, th:first-child { text-align: left; }
td.flag { color: #a60; text-align: left; cursor: help; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
"""


def leaderboard_html(t: Any, prov: dict[str, Any], images: list[Path]) -> str:

    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>robustbench-er leaderboard</title>", f"<style>{STYLE}</style>",
             f"<script>{SCRIPT}</script></head><body>", "<h1>Leaderboard</h1>",
             f"<p>{e(LEGEND).replace('`', '')} Click a column header to sort.</p>"]
    for sec in leaderboard_sections(t):
        parts.append(f"<h2>{e(sec.title)}</h2>")
        parts.append('<table><thead><tr>' + "".join(f'<th onclick="sortBy(this)">{e(h)}</th>' for h in sec.head)
                     + "</tr></thead><tbody>")
        for cells, (flags, details) in zip(sec.rows, sec.flags):
            tds = [f"<td>{e(c)}</td>" for c in cells[:-1]]
            tip = e(details or flags, quote=True)
            tds.append(f'<td class="flag" title="{tip}">{e(cells[-1])}</td>' if flags else "<td></td>")
            parts.append("<tr>" + "".join(tds) + "</tr>")
        parts.append("</tbody></table>")
        if sec.notes:
            parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in sec.notes) + "</ul>")
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        parts.append(f'<h3>{e(Path(img).stem)}</h3><img alt="{e(Path(img).stem)}" onload="this.dataset.shown = 1"'
                     f' src="data:image/png;base64,{data}">')
    versions = ", ".join(f"{k} {v}" for k, v in sorted((prov.get("versions") or {}).items()))
    parts.append(f"<h2>Provenance</h2><pre>{e(prov.get('command') or '')}</pre>"
                 f"<p>Versions: {e(versions)}. Written {e(prov.get('written') or '')}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
