// The node dashboard: one EventSource on events, the history ring for the
// plots, and the pause/resume buttons posting to the control API. Peer data
// (device names, peer IDs) reaches the page only through textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const maxPoints = 3600;
  const hist = { t: [], loss: [], sps: [], own: [], temp: [], util: [] };
  let plots = null;
  let last = null;

  function short(id) {
    return id && id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id || "";
  }
  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
  }
  function fill(dl, rows) {
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
  }
  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
  }
  function duration(s) {
    s = Math.floor(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h > 0 ? h + "h " + m + "m" : m > 0 ? m + "m " + (s % 60) + "s" : s + "s";
  }

  function makePlot(el, series, yLabel) {
    const opts = {
      width: Math.max(300, el.clientWidth),
      height: 220,
      scales: { x: { time: true } },
      axes: [{}, { label: yLabel, size: 60 }],
      series: [{}].concat(series),
      legend: { live: false },
    };
    return new uPlot(opts, [[]].concat(series.map(() => [])), el);
  }

  function ensurePlots() {
    if (plots) return;
    plots = {
      loss: makePlot($("plot-loss"), [{ label: "loss", stroke: "#c05621", width: 2 }], "loss"),
      rate: makePlot($("plot-rate"), [
        { label: "swarm", stroke: "#2b6cb0", width: 2 },
        { label: "this node", stroke: "#2f855a", width: 2 },
      ], "samples/s"),
      gpu: null,
    };
    window.addEventListener("resize", () => {
      for (const [name, p] of Object.entries(plots)) {
        if (!p) continue;
        const box = $(name === "gpu" ? "plot-gpu" : "plot-" + name);
        p.setSize({ width: Math.max(300, box.clientWidth), height: 220 });
      }
    });
  }

  function push(p) {
    const v = (x) => (typeof x === "number" && isFinite(x) ? x : null);
    hist.t.push(p.t);
    hist.loss.push(v(p.loss) || null);
    hist.sps.push(v(p.samples_per_s));
    hist.own.push(v(p.throughput));
    const g = p.gpus && p.gpus.length ? p.gpus[0] : null;
    hist.temp.push(g ? g.temperature_c : null);
    hist.util.push(g && g.utilization_pct >= 0 ? g.utilization_pct : null);
    if (hist.t.length > maxPoints) for (const k in hist) hist[k].shift();
  }

  function redraw() {
    ensurePlots();
    plots.loss.setData([hist.t, hist.loss]);
    plots.rate.setData([hist.t, hist.sps, hist.own]);
    if (hist.temp.some((x) => x !== null)) {
      $("plot-gpu-box").hidden = false;
      if (!plots.gpu) {
        plots.gpu = makePlot($("plot-gpu"), [
          { label: "temperature", stroke: "#c53030", width: 2 },
          { label: "utilisation", stroke: "#805ad5", width: 2 },
        ], "°C / %");
      }
      plots.gpu.setData([hist.t, hist.temp, hist.util]);
    }
    // For tests and curious volunteers: how many points the plots hold.
    document.body.dataset.points = String(hist.t.length);
    document.body.dataset.lossPoints = String(hist.loss.filter((x) => x !== null).length);
    document.body.dataset.ratePoints = String(hist.sps.filter((x) => x !== null && x > 0).length);
  }

  function service(st, name) {
    return st.services && st.services[name] ? st.services[name] : null;
  }

  function render(st) {
    last = st;
    const tr = service(st, "training");
    const training = !!st.state;
    $("title").textContent = "swarm " + (st.role === "bootstrap" ? "bootstrap" : "node") + (st.run_name ? " · " + st.run_name : "");
    let state = st.state || (st.role === "bootstrap" ? "bootstrap" : "not training");
    const held = service(st, "pause");
    if (held && held.holds && held.holds.length) state = "paused";
    const badge = $("state");
    badge.textContent = state;
    badge.className = "badge " + state;

    // Why: which rules hold training, or what the node waits for.
    const pause = service(st, "pause");
    let why = "";
    if (pause && pause.holds && pause.holds.length) {
      why = "Training held by " + pause.holds.map((h) => h.rule + " (" + h.reason + ")").join("; ");
    } else if (st.governor && st.governor.state === "paused") {
      why = "Paused by the GPU limits: " + st.governor.reason;
    } else if (st.state === "joining") {
      why = "Joining: finding the run's peers and a shard to hold.";
    } else if (st.security && st.security.admission_refused) {
      why = st.security.admission_refused;
    }
    $("why").textContent = why;
    $("pause").disabled = !pause || pause.holds.some((h) => h.rule === "manual");
    $("resume").disabled = !pause || !pause.holds.some((h) => h.rule === "manual");
    $("pause").hidden = $("resume").hidden = !pause;

    fill($("node"), [
      ["peer", short(st.peer_id)],
      ["reachability", st.reachability],
      ["device", training ? st.device + " (" + st.engine + ")" : "–"],
      ["shard", training ? (st.shard >= 0 ? String(st.shard) : "choosing") : "–"],
      ["utilisation", tr ? fmt(100 * tr.utilization, 0) + "%" : "–"],
      ["processed", tr ? String(tr.processed) + " samples" : "–"],
      ["credited", training ? String(st.credit || 0) + " samples" : "–"],
      ["uptime", duration(st.uptime_seconds)],
      ["version", st.version || "dev"],
    ]);
    fill($("run"), [
      ["run", st.run_name || "–"],
      ["run ID", short(st.run_id)],
      ["epoch", training ? st.epoch + " of " + st.epochs : "–"],
      ["this epoch", tr ? tr.samples + " / " + tr.target_batch + " samples" : "–"],
      ["mode", tr ? tr.mode : "–"],
      ["loss", fmt(st.loss, 4)],
      ["swarm samples/s", fmt(st.samples_per_s, 0)],
      ["run peers", String((st.run_peers || []).length)],
    ]);
    const a = st.averaging;
    fill($("averaging"), a ? [
      ["round", String(a.round)],
      ["group size", String(a.group_size)],
      ["averaged", fmt(100 * a.fraction, 0) + "%"],
      ["took", fmt(a.seconds, 2) + " s"],
    ] : [["last round", "none yet"]]);
    const gpu = service(st, "gpu");
    if (gpu && gpu.devices && gpu.devices.length) {
      $("gpucard").hidden = false;
      const rows = [];
      for (const d of gpu.devices) {
        rows.push(["GPU " + d.index, d.name]);
        rows.push(["", d.temperature_c + " °C, " + (d.utilization_pct >= 0 ? d.utilization_pct + "%" : "–") + ", " +
          Math.round(d.memory_used_bytes / 1048576) + " / " + Math.round(d.memory_total_bytes / 1048576) + " MiB, " + fmt(d.power_w, 0) + " W"]);
      }
      fill($("gpus"), rows);
    }

    const shards = $("shards");
    shards.replaceChildren();
    for (const s of st.shards || []) {
      const row = document.createElement("tr");
      if ((s.peers || []).includes(st.peer_id)) row.className = "self";
      cell(row, String(s.index));
      cell(row, String((s.peers || []).length), "num");
      cell(row, fmt(s.throughput, 0), "num");
      cell(row, (s.peers || []).map(short).join(" "));
      shards.append(row);
    }
    const peers = $("peers");
    peers.replaceChildren();
    const list = ((tr && tr.peers) || []).slice().sort((x, y) => (y.credit || 0) - (x.credit || 0));
    for (const p of list) {
      const row = document.createElement("tr");
      if (p.peer_id === st.peer_id) row.className = "self";
      cell(row, short(p.peer_id) + (p.peer_id === st.peer_id ? " (this node)" : ""));
      cell(row, p.shard >= 0 ? String(p.shard) : "–");
      cell(row, p.state);
      cell(row, String(p.epoch), "num");
      cell(row, p.device);
      cell(row, fmt(p.throughput, 0), "num");
      cell(row, creditText(p, st.peer_id), "num");
      peers.append(row);
    }
    if (!list.length) {
      for (const p of st.run_peers || []) {
        const row = document.createElement("tr");
        cell(row, short(p.peer_id));
        cell(row, p.shard !== undefined && p.shard >= 0 ? String(p.shard) : "–");
        cell(row, p.state || "–");
        cell(row, p.epoch !== undefined ? String(p.epoch) : "–", "num");
        cell(row, p.device || "–");
        cell(row, fmt(p.throughput, 0), "num");
        cell(row, creditText(p, st.peer_id), "num");
        peers.append(row);
      }
    }
  }

  // creditText is a peer's claimed credit and this node's check of it.
  function creditText(p, self) {
    const c = String(p.credit || 0);
    if (p.peer_id === self) return c;
    if (!p.credit_check) return p.credit ? c + " (unchecked)" : c;
    return p.credit_check === "backed" ? c + " (backed)" : c + " (refused)";
  }

  function showError(msg) {
    const e = $("error");
    e.textContent = msg;
    e.hidden = !msg;
  }

  async function control(what) {
    showError("");
    try {
      const resp = await fetch("/v1/" + what, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ rule: "manual" }),
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        showError(what + " refused: " + (body.error || resp.status + " " + resp.statusText));
        return;
      }
      if (body && body.holds && last) {
        last.services = Object.assign({}, last.services, { pause: body });
        render(last);
      }
    } catch (err) {
      showError(what + " failed: " + err.message);
    }
  }
  $("pause").addEventListener("click", () => control("pause"));
  $("resume").addEventListener("click", () => control("resume"));

  const es = new EventSource("events");
  es.addEventListener("hello", (e) => {
    const ev = JSON.parse(e.data);
    for (const k in hist) hist[k].length = 0;
    for (const p of ev.history) push(p);
    render(ev.status);
    redraw();
    showError("");
  });
  es.addEventListener("tick", (e) => {
    const ev = JSON.parse(e.data);
    if (ev.point) push(ev.point);
    render(ev.status);
    redraw();
  });
  es.onerror = () => {
    const badge = $("state");
    badge.textContent = "offline";
    badge.className = "badge offline";
    showError("Lost the node's event stream; retrying…");
  };
})();
