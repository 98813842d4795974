"""The report's inline CSS and JS (kept in Python so they ship without package-data settings)."""

CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --bg:#fff; --accent:#3b5bdb; --warn:#b85c00; --err:#c92a2a; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 14px; }
header { border-bottom: 2px solid var(--accent); margin-bottom: 8px; }
h1 { font-size: 1.35rem; margin: 14px 0 4px; }
h2 { font-size: 1.2rem; margin: 22px 0 6px; border-bottom: 1px solid var(--line); padding-bottom: 3px; }
h2 small { color: var(--muted); font-weight: normal; font-size: .8rem; }
h3 { font-size: 1.02rem; margin: 16px 0 6px; }
.meta { color: var(--muted); font-size: .85rem; margin: 2px 0 8px; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; }
table { border-collapse: collapse; font-size: .82rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left; white-space: nowrap; }
td[data-v] { text-align: right; }
table.kv th { font-weight: 500; color: var(--muted); white-space: normal; }
table.kv td { white-space: normal; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f5f8; position: sticky; top: 0; }
table.sortable th[aria-sort="ascending"]::after { content: " ▲"; }
table.sortable th[aria-sort="descending"]::after { content: " ▼"; }
table.sortable tbody tr:nth-child(even) { background: #fafafa; }
.notes { border-left: 4px solid var(--warn); background: #fff7e6; padding: 6px 12px; margin: 8px 0; font-size: .88rem; }
.notes ul { margin: 4px 0; padding-left: 18px; }
ul.checks { padding-left: 0; list-style: none; }
ul.checks li { margin: 5px 0; padding: 4px 8px; border-left: 4px solid var(--line); font-size: .88rem; }
ul.checks li.error { border-color: var(--err); } ul.checks li.warning { border-color: var(--warn); }
.sev { text-transform: uppercase; font-size: .7rem; color: var(--muted); margin-right: 4px; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 520px), 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; min-width: 0; }
figure img, figure svg { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figure.wide { grid-column: 1 / -1; }
figcaption { font-size: .8rem; color: var(--muted); margin-top: 4px; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 8px; font-size: .78rem; }
details { margin: 6px 0; } summary { cursor: pointer; }
@media (max-width: 600px) { body { font-size: 14px; } h1 { font-size: 1.1rem; } th, td { padding: 3px 5px; } }
"""

# Sort a table by the clicked header: numeric when cells carry data-v, else by text; click again to reverse.
JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    function sort() {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0], rows = Array.from(body.rows);
      function key(r) { var c = r.cells[col]; if (!c) return ''; var v = c.getAttribute('data-v');
        return v !== null ? parseFloat(v) : c.textContent.trim(); }
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        var d = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
        return asc ? d : -d; });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener('click', sort);
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); } });
  });
});
"""
