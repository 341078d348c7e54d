// The explorer's script: draws the plots, the paged neuron table and the neuron card from the page's inline JSON.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("culnig-data").textContent);
  var CONFIG = {displaylogo: false, responsive: true};
  function $(id) { return document.getElementById(id); }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmt(x) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    var a = Math.abs(x);
    return a >= 1e-3 && a < 1e4 ? x.toPrecision(4) : x.toExponential(3);
  }

  // ------------------------------------------------------------------------------------------ plots
  function layerPlot() {
    var L = D.layers;
    if (!L) { $("layer-missing").hidden = false; return; }
    var layers = [], traces = [];
    for (var i = 0; i < L.num_layers; i++) layers.push(i);
    Object.keys(L.sets).forEach(function (name) {
      [["mlp", "MLP gate"], ["attn", "attention q/k/v"]].forEach(function (k) {
        traces.push({type: "bar", name: name + " · " + k[1], x: layers, y: L.sets[name][k[0]],
                     hovertemplate: "layer %{x}<br>%{y} neurons<extra>" + esc(name + " · " + k[1]) + "</extra>"});
      });
    });
    Plotly.newPlot("layer-plot", traces, {barmode: "group", xaxis: {title: {text: "layer"}, dtick: 1},
      yaxis: {title: {text: "neurons"}}, margin: {t: 20}, legend: {orientation: "h"}}, CONFIG);
  }

  function kinshipPlot() {
    var K = D.kinship;
    if (!K) { $("kinship-missing").hidden = false; return; }
    var z = K.matrix.map(function (row) { return row.map(function (v) { return 100 * v; }); });
    Plotly.newPlot("kinship-plot", [{type: "heatmap", z: z, x: K.groups, y: K.targets, colorscale: "RdBu", zmid: 0,
      colorbar: {title: {text: "drop (points)"}},
      hovertemplate: "inhibited: %{y}<br>evaluated: %{x}<br>drop: %{z:.2f} points<extra></extra>"}],
      {xaxis: {title: {text: "evaluated group"}}, yaxis: {title: {text: "inhibited group's neurons"},
       autorange: "reversed"}, margin: {t: 20}}, CONFIG);
  }

  function stabilityPlot() {
    var S = D.stability;
    if (!S || !$("stability-plot")) return;
    var scopes = S.map(function (r) { return r.scope; });
    var series = [["split_half", "split-half Jaccard"], ["boot_mean", "bootstrap Jaccard (mean)"],
                  ["boot_min", "bootstrap Jaccard (min)"], ["chance", "chance (split-half)"]];
    Plotly.newPlot("stability-plot", series.map(function (s) {
      return {type: "bar", name: s[1], x: scopes, y: S.map(function (r) { return r[s[0]]; }),
              hovertemplate: "%{x}: %{y:.2f}<extra>" + s[1] + "</extra>"};
    }), {barmode: "group", yaxis: {title: {text: "Jaccard"}, range: [0, 1]}, margin: {t: 20},
         shapes: [{type: "line", xref: "paper", x0: 0, x1: 1, y0: 0.5, y1: 0.5, line: {dash: "dot", color: "#c00"}}],
         legend: {orientation: "h"}}, CONFIG);
  }

  // ------------------------------------------------------------------------------------ neuron table
  var N = D.neurons, G = N.groups, nRows = N.index.length;
  var COLS = [
    {key: "site", label: "site", get: function (i) { return N.sites[N.site[i]]; }, text: true},
    {key: "layer", label: "layer", get: function (i) { return N.layer[i]; }},
    {key: "kind", label: "kind", get: function (i) { return N.kind[i]; }, text: true},
    {key: "index", label: "index", get: function (i) { return N.index[i]; }},
    {key: "contrast", label: "contrast", get: function (i) { return N.contrast[i]; }, num: true},
    {key: "score", label: "score", get: function (i) { return N.score ? N.score[i] : null; }, num: true},
    {key: "control", label: "control", get: function (i) { return N.control ? N.control[i] : null; }, num: true},
    {key: "crc", label: "CRC", get: function (i) { return N.crc ? N.crc[i] : null; }, num: true},
    {key: "general", label: "in general", get: function (i) { return N.general[i] ? "yes" : ""; }, text: true},
    {key: "specific", label: "in specific", text: true,
     get: function (i) { return N.specific[i].map(function (g) { return G[g]; }).join(", "); }}
  ];
  if (N.z) G.forEach(function (g, j) {
    COLS.push({key: "z:" + g, label: "z " + g, get: function (i) { return N.z[i][j]; }, num: true});
  });
  var state = {sort: "contrast", desc: true, page: 0, per: 50, rows: null, selected: null};

  function matches(i, text, set, group) {
    if (set === "general" && !N.general[i]) return false;
    if (set === "specific" && !N.specific[i].length) return false;
    if (set === "selected" && !N.general[i] && !N.specific[i].length) return false;
    if (set === "other" && (N.general[i] || N.specific[i].length)) return false;
    if (group !== "" && N.specific[i].indexOf(+group) < 0) return false;
    if (!text) return true;
    var name = N.sites[N.site[i]] + "[" + N.index[i] + "]";
    return name.indexOf(text) >= 0;
  }

  function refilter() {
    var text = $("neuron-filter").value.trim(), set = $("neuron-set").value, group = $("neuron-group").value;
    var rows = [];
    for (var i = 0; i < nRows; i++) if (matches(i, text, set, group)) rows.push(i);
    var col = COLS.filter(function (c) { return c.key === state.sort; })[0], sign = state.desc ? -1 : 1;
    var keys = new Map();
    rows.forEach(function (i) { keys.set(i, col.get(i)); });
    rows.sort(function (a, b) {
      var x = keys.get(a), y = keys.get(b);
      if (x === y) return a - b;
      if (x === null || x === "") return 1;
      if (y === null || y === "") return -1;
      return (x < y ? -1 : 1) * sign;
    });
    state.rows = rows;
    state.page = 0;
    draw();
  }

  function header() {
    $("neuron-table").tHead.innerHTML = "<tr>" + COLS.map(function (c) {
      var cls = c.key === state.sort ? (state.desc ? "sorted-desc" : "sorted-asc") : "";
      return "<th data-key='" + esc(c.key) + "' class='" + cls + "'>" + esc(c.label) + "</th>";
    }).join("") + "</tr>";
  }

  function draw() {
    header();
    var pages = Math.max(1, Math.ceil(state.rows.length / state.per));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.per, stop = Math.min(state.rows.length, start + state.per), html = [];
    for (var r = start; r < stop; r++) {
      var i = state.rows[r], cls = (N.general[i] ? "in-general" : "") + (i === state.selected ? " selected-row" : "");
      html.push("<tr data-row='" + i + "' class='" + cls + "'>" + COLS.map(function (c) {
        var v = c.get(i);
        return c.num ? "<td data-value='" + (v === null ? "" : v) + "'>" + fmt(v) + "</td>" : "<td>" + esc(v) + "</td>";
      }).join("") + "</tr>");
    }
    $("neuron-table").tBodies[0].innerHTML = html.join("");
    $("page-info").textContent = (state.rows.length ? (start + 1) + "–" + stop : "0") + " of " + state.rows.length +
      " rows (page " + (state.page + 1) + " of " + pages + ")";
  }

  // ------------------------------------------------------------------------------------------ card
  function card(i) {
    state.selected = i;
    draw();
    var site = N.sites[N.site[i]], name = site + "[" + N.index[i] + "]";
    $("neuron-card").hidden = false;
    $("card-title").textContent = name;
    var stats = [["layer", N.layer[i]], ["kind", N.kind[i]], ["contrast", fmt(N.contrast[i])],
                 ["score", fmt(N.score ? N.score[i] : null)], ["control", fmt(N.control ? N.control[i] : null)],
                 ["CRC", fmt(N.crc ? N.crc[i] : null)], ["in general", N.general[i] ? "yes" : "no"],
                 ["in specific", N.specific[i].map(function (g) { return G[g]; }).join(", ") || "–"]];
    var inst = D.instance && D.instance.neurons[site + ":" + N.index[i]];
    if (inst) stats.push(["share of items positive", (100 * inst.positive_share).toFixed(1) + "%"]);
    $("card-stats").innerHTML = stats.map(function (s) {
      return "<tr><th>" + esc(s[0]) + "</th><td data-stat='" + esc(s[0]) + "'>" + esc(s[1]) + "</td></tr>";
    }).join("");
    if (N.group_scores) {
      Plotly.react("card-plot", [{type: "bar", x: G, y: N.group_scores[i], customdata: N.z[i],
        hovertemplate: "%{x}: %{y:.4g}<br>z = %{customdata:.2f}<extra></extra>"}],
        {title: {text: "per-group contrast of " + name}, yaxis: {title: {text: "group score"}},
         margin: {t: 40}}, CONFIG);
    } else {
      $("card-plot").innerHTML = "<p class='missing'>No score tables in this folder: no per-group scores.</p>";
    }
    if (!inst) {
      $("card-items").innerHTML = "<p class='missing'>" + (D.instance ? "Not in the instance view (culture-general " +
        "neurons only)." : "No instance view in this run folder (instance.json).") + "</p>";
      return;
    }
    $("card-items").innerHTML = "<table id='card-items-table'><thead><tr><th>item</th><th>group</th><th>question</th>" +
      "<th>item score</th></tr></thead><tbody>" + inst.top.map(function (t) {
        var it = D.instance.items[t[0]];
        return "<tr><td>" + esc(it.id) + "</td><td>" + esc(it.group) + "</td><td class='text'>" + esc(it.question) +
          "</td><td data-value='" + t[1] + "'>" + fmt(t[1]) + "</td></tr>";
      }).join("") + "</tbody></table>";
  }

  function provenance() {
    $("provenance-table").innerHTML = Object.keys(D.provenance).map(function (k) {
      return "<tr><th>" + esc(k) + "</th><td class='text'>" + esc(D.provenance[k]) + "</td></tr>";
    }).join("");
    $("config-json").textContent = D.config ? JSON.stringify(D.config, null, 1) : "no config.json in this folder";
  }

  function wire() {
    G.forEach(function (g, j) {
      var o = document.createElement("option");
      o.value = String(j); o.textContent = g; $("neuron-group").appendChild(o);
    });
    var sets = N.general.filter(function (x) { return x; }).length;
    $("neuron-summary").textContent = nRows + " rows: " + sets + " culture-general neurons, the culture-specific " +
      "ones, and the " + N.top_n + " highest-contrast others" +
      (N.n_neurons ? " of " + N.n_neurons + " neurons." : ".");
    var typing = null;  // one pass over the rows once typing pauses, not one per keystroke
    $("neuron-filter").addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(refilter, 150);
    });
    ["neuron-set", "neuron-group"].forEach(function (id) { $(id).addEventListener("change", refilter); });
    $("neuron-per-page").addEventListener("change", function () { state.per = +this.value; state.page = 0; draw(); });
    $("page-prev").addEventListener("click", function () { state.page = Math.max(0, state.page - 1); draw(); });
    $("page-next").addEventListener("click", function () { state.page += 1; draw(); });
    $("neuron-table").tHead.addEventListener("click", function (e) {
      var key = e.target.getAttribute("data-key");
      if (!key) return;
      state.desc = key === state.sort ? !state.desc : true;
      state.sort = key;
      refilter();
    });
    $("neuron-table").tBodies[0].addEventListener("click", function (e) {
      var tr = e.target.closest("tr");
      if (tr) card(+tr.getAttribute("data-row"));
    });
  }

  layerPlot(); kinshipPlot(); stabilityPlot(); provenance(); wire(); refilter();
  document.body.setAttribute("data-ready", "1");
})();
