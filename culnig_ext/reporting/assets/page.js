// Sortable tables for the Markdown pages' report.html: a click on a column title sorts by it (numbers as numbers).
(function () {
  "use strict";
  function key(text) {
    var m = text.replace(/[−–]/g, "-").match(/^[-+]?\d+(\.\d+)?(e[-+]?\d+)?/i);
    return m ? parseFloat(m[0]) : text;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.tHead.addEventListener("click", function (e) {
      var th = e.target.closest("th");
      if (!th) return;
      var col = Array.prototype.indexOf.call(th.parentNode.children, th);
      var desc = th.dataset.sort !== "desc";
      Array.prototype.forEach.call(th.parentNode.children, function (h) { delete h.dataset.sort; });
      th.dataset.sort = desc ? "desc" : "asc";
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a.cells[col].textContent), y = key(b.cells[col].textContent);
        if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
        return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.body.setAttribute("data-ready", "1");
})();
