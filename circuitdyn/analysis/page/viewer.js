// circuitdyn's circuit viewer: draws the JSON in <script id="circuitdyn-data"> as an SVG layered graph.
// No library, no network: everything the page needs is in the file.
(function () {
  "use strict";
  const errors = [];
  window.addEventListener("error", function (event) {
    errors.push(String(event.message));
    document.body.setAttribute("data-errors", String(errors.length));
  });

  const D = JSON.parse(document.getElementById("circuitdyn-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const diff = D.labels.length === 2;
  const ROW = 64, PAD = 48, KV_DROP = 17, PORT = { q: -7, k: 0, v: 7 };
  const DASH = { q: "", k: "6 3", v: "1.5 3" };
  const nRows = 2 * D.graph.n_layers + 2;
  const width = Math.max(760, D.graph.n_heads * 46 + 2 * PAD);
  const height = nRows * ROW + PAD;
  const state = { view: diff ? "change" : "base", relative: false, top: D.top };
  const nodeIndex = {};
  D.nodes.forEach(function (n, k) { nodeIndex[n.name] = k; });

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }
  function px(n) { return PAD + n.x * (width - 2 * PAD); }
  function py(n) { return height - PAD / 2 - n.row * ROW - ROW / 2; }
  function fmt(x) {
    if (x === null || x === undefined) return "n/a";
    const a = Math.abs(x);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? x.toExponential(2) : x.toPrecision(4);
  }
  function value(e) {
    if (state.view === "base") return e.v[0];
    if (state.view === "tuned") return e.v[1];
    return state.relative ? e.relative : e.change;
  }
  function viewName() {
    if (state.view === "base") return D.labels[0];
    if (state.view === "tuned") return D.labels[1];
    return (state.relative ? "relative change " : "change ") + D.labels[1] + " - " + D.labels[0];
  }

  const svg = el("svg", { id: "graph", width: width, height: height, viewBox: "0 0 " + width + " " + height });
  document.getElementById("canvas").appendChild(svg);
  const rowLayer = el("g", { id: "rows" }, svg);
  const edgeLayer = el("g", { id: "edges" }, svg);
  const nodeLayer = el("g", { id: "nodes" }, svg);
  for (let r = 0; r < nRows; r++) {
    const y = height - PAD / 2 - r * ROW - ROW / 2;
    const label = r === 0 ? "input" : r === nRows - 1 ? "logits" : (r % 2 ? "attn " : "mlp ") + Math.floor((r - 1) / 2);
    el("line", { x1: PAD / 2, x2: width - PAD / 4, y1: y, y2: y, class: "row-line" }, rowLayer);
    el("text", { x: 4, y: y - 4, class: "row-label" }, rowLayer).textContent = label;
  }
  const nodeShapes = D.nodes.map(function (n) {
    const g = el("g", { class: "node " + n.kind, "data-node": n.name, transform: "translate(" + px(n) + "," + py(n) + ")" }, nodeLayer);
    el("rect", { x: -17, y: -10, width: 34, height: 20, rx: 6 }, g);
    const crowded = n.kind === "head" && (width - 2 * PAD) / D.graph.n_heads < 40;
    el("text", { y: 4, class: "node-label" }, g).textContent = crowded ? "h" + n.name.split(".h")[1] : n.name;
    el("title", {}, g).textContent = n.name;
    return g;
  });

  // grouped-query attention: a bar under the query heads that share a key/value head; its k/v edges end there
  const group = D.graph.n_heads / D.graph.n_kv_heads;
  if (D.graph.granularity === "head" && group > 1) {
    D.nodes.filter(function (n) { return n.kind === "head" && Number(n.name.split(".h")[1]) % group === 0; })
      .forEach(function (first) {
        const last = D.nodes[nodeIndex[first.name.split(".h")[0] + ".h" + (Number(first.name.split(".h")[1]) + group - 1)]];
        const y = py(first) + KV_DROP;
        el("line", { x1: px(first) - 12, x2: px(last) + 12, y1: y, y2: y, class: "kv-bar" }, nodeLayer);
        el("text", { x: px(last) + 16, y: y + 3, class: "kv-label" }, nodeLayer).textContent =
          "kv" + Number(first.name.split(".h")[1]) / group;
      });
  }

  const tip = document.getElementById("tip");
  function spreadText(s, name) {
    if (!s) return name + ": no per-example scores";
    return name + " over " + s.n + " examples: mean " + fmt(s.mean) + ", sd " + fmt(s.sd) + ", p10 " + fmt(s.p10) +
      ", median " + fmt(s.p50) + ", p90 " + fmt(s.p90) + ", positive in " + (100 * s.positive).toFixed(0) + "%";
  }
  function showTip(event, e) {
    const lines = [e.name + (e.kind in PORT ? "  [" + { q: "query", k: "key", v: "value" }[e.kind] + " input]" : "")];
    D.labels.forEach(function (label, k) { lines.push(label + ": " + fmt(e.v[k])); });
    if (diff) {
      lines.push("change: " + fmt(e.change) + ",  relative: " + fmt(e.relative));
    }
    D.labels.forEach(function (label, k) { lines.push(spreadText(e.spread[k], label)); });
    if (e.change_spread) lines.push(spreadText(e.change_spread, "change"));
    tip.textContent = lines.join("\n");
    tip.style.left = (event.pageX + 14) + "px";
    tip.style.top = (event.pageY + 14) + "px";
    tip.hidden = false;
  }

  function render() {
    const ranked = D.edges.slice().sort(function (a, b) { return Math.abs(value(b)) - Math.abs(value(a)); });
    const shown = ranked.slice(0, state.top);
    const top = shown.reduce(function (m, e) { return Math.max(m, Math.abs(value(e))); }, 0) || 1;
    while (edgeLayer.firstChild) edgeLayer.removeChild(edgeLayer.firstChild);
    const used = {};
    shown.slice().reverse().forEach(function (e) {
      const v = value(e), s = D.nodes[nodeIndex[e.source]];
      const ends = e.owners.map(function (o) { return D.nodes[nodeIndex[o]]; });
      used[e.source] = true;
      e.owners.forEach(function (o) { used[o] = true; });
      const x1 = ends.reduce(function (m, n) { return m + px(n); }, 0) / ends.length + (PORT[e.kind] || 0);
      const y1 = py(ends[0]) + (ends.length > 1 ? KV_DROP : 10), x0 = px(s), y0 = py(s) - 10, ym = (y0 + y1) / 2;
      // an edge between nodes one above the other bows sideways, by how many rows it spans, so that long
      // edges along the middle column do not hide behind each other and the nodes they pass
      const span = Math.abs(y0 - y1) / ROW;
      const bow = Math.abs(x1 - x0) < 4 && span > 1.5 ? Math.min(14 * span, 300) * (e.kind === "logits" ? 1 : -1) : 0;
      const path = el("path", {
        class: "edge " + (v >= 0 ? "pos" : "neg"), "data-edge": e.name, "data-kind": e.kind,
        d: "M" + x0 + "," + y0 + " C" + (x0 + bow) + "," + ym + " " + (x1 + bow) + "," + ym + " " + x1 + "," + y1,
        "stroke-width": (0.6 + 5.4 * Math.abs(v) / top).toFixed(2),
        "stroke-opacity": (0.3 + 0.65 * Math.abs(v) / top).toFixed(2),
      }, edgeLayer);
      if (DASH[e.kind]) path.setAttribute("stroke-dasharray", DASH[e.kind]);
      path.addEventListener("mousemove", function (event) { showTip(event, e); });
      path.addEventListener("mouseleave", function () { tip.hidden = true; });
    });
    nodeShapes.forEach(function (g) {
      g.classList.toggle("idle", !used[g.getAttribute("data-node")]);
    });
    document.getElementById("shown").textContent = "top " + shown.length + " of " + D.edges.length +
      " edges held by this page (" + D.n_edges + " in the graph), ranked by |" + viewName() + "|";
    document.getElementById("top-value").textContent = String(shown.length);
    document.body.setAttribute("data-shown", String(shown.length));
  }

  const slider = document.getElementById("top");
  slider.max = String(D.edges.length);
  slider.value = String(state.top);
  slider.addEventListener("input", function () { state.top = Number(slider.value); render(); });
  const views = document.getElementById("views");
  const relative = document.getElementById("relative");
  if (diff) {
    [["base", D.labels[0]], ["tuned", D.labels[1]], ["change", "change"]].forEach(function (pair) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio"; input.name = "view"; input.value = pair[0]; input.id = "view-" + pair[0];
      input.checked = pair[0] === state.view;
      input.addEventListener("change", function () { state.view = pair[0]; relative.disabled = pair[0] !== "change"; render(); });
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + pair[1]));
      views.appendChild(label);
    });
    relative.addEventListener("change", function () { state.relative = relative.checked; render(); });
  } else {
    document.getElementById("relative-box").hidden = true;
  }

  const table = document.getElementById("metrics");
  const head = table.createTHead().insertRow();
  ["metric"].concat(D.labels, diff ? ["change", "95% CI", "p"] : []).forEach(function (h) {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  });
  const body = table.createTBody();
  D.metrics.forEach(function (m) {
    const row = body.insertRow();
    const name = row.insertCell();
    name.textContent = m.label;
    name.title = m.meaning;
    m.values.forEach(function (v) { row.insertCell().textContent = fmt(v); });
    if (diff) {
      row.insertCell().textContent = m.delta === undefined ? "n/a" : fmt(m.delta);
      row.insertCell().textContent = m.ci ? "[" + fmt(m.ci[0]) + ", " + fmt(m.ci[1]) + "]" : "";
      row.insertCell().textContent = m.p === undefined || m.p === null ? "" : m.p < 0.001 ? "<0.001" : m.p.toFixed(3);
    }
  });
  document.getElementById("metrics-note").textContent = "Each value: the mean over examples of each example's metric" +
    (diff ? "; change: " + D.labels[1] + " - " + D.labels[0] + ", examples paired by index, 95% BCa CI from " +
      D.n_resamples.toLocaleString("en-US") + " bootstrap resamples, sign-flip permutation p. Hover a metric for its definition." : ".");
  const about = document.getElementById("about");
  D.sources.forEach(function (s, k) {
    const li = document.createElement("li");
    const parts = [s.model || "model not recorded", s.training, s.metric && ("metric " + s.metric),
      s.method && (s.method + ", " + s.ablation), s.examples + " examples" + (s.per_example ? "" : " (mean scores only)"),
      s.imported && ("imported from " + s.imported.format)].filter(Boolean);
    li.textContent = D.labels[k] + ": " + parts.join("; ");
    about.appendChild(li);
  });
  document.getElementById("graph-spec").textContent = D.graph.granularity + " graph, " + D.graph.n_layers + " layers, " +
    D.graph.n_heads + " heads (" + D.graph.n_kv_heads + " key/value)";
  render();
  document.body.setAttribute("data-ready", "1");
})();
