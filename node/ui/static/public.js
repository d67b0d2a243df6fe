// The public swarm page of a bootstrap node: polls swarm.json and draws
// the runs, their shards and holders. Peer IDs reach the page only through
// textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  function short(id) {
    return id && id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id || "";
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function fill(dl, rows) {
    dl.replaceChildren();
    for (const [k, v] of rows) dl.append(el("dt", k), el("dd", v));
  }
  function peers(list) {
    return list.map((p) => short(p.peer_id) + (p.connected ? "" : " (not connected)")).join(" ");
  }

  function render(v) {
    $("state").textContent = v.runs.length + (v.runs.length === 1 ? " run" : " runs");
    $("state").className = "badge online";
    $("updated").textContent = "updated " + new Date(v.updated).toLocaleTimeString();
    $("source").textContent = "Source: " + v.source + ".";
    fill($("boot"), [
      ["peer", short(v.peer_id)],
      ["version", v.version || "dev"],
      ["connected peers", String(v.connected_peers)],
      ["routing table", String(v.routing_table_size)],
    ]);
    const runs = $("runs");
    runs.replaceChildren();
    for (const r of v.runs) {
      const sec = el("section");
      sec.append(el("h2", "Run " + r.name + (r.model !== r.name ? " · " + r.model : "") + " · " + r.epochs + " epochs · " +
        r.peers.length + " peers (" + r.connected + " connected here) · " + short(r.run_id)));
      if (r.error) sec.append(el("p", r.error, "error"));
      const figs = el("dl");
      figs.className = "figures";
      fill(figs, r.reported > 0 ? [
        ["epoch", r.epoch + " of " + r.epochs],
        ["loss", r.loss > 0 ? r.loss.toFixed(4) : "n/a"],
        ["samples/s", r.samples_per_s.toFixed(0)],
        ["answering", r.reported + " of " + r.peers.length + " peers"],
      ] : [["progress", "no peer has answered yet"]]);
      sec.append(figs);
      const table = el("table");
      const head = el("tr");
      for (const h of ["shard", "model units", "holders", "samples/s", "peers"]) head.append(el("th", h));
      const thead = el("thead");
      thead.append(head);
      const body = el("tbody");
      for (const s of r.shards) {
        const tr = el("tr");
        tr.append(el("td", String(s.index)), el("td", s.units), el("td", String(s.holders.length), "num"),
          el("td", s.samples_per_s.toFixed(0), "num"), el("td", peers(s.holders) || "none"));
        body.append(tr);
      }
      table.append(thead, body);
      sec.append(table);
      if (r.volunteers.length > 0) {
        sec.append(el("h3", "Volunteers, most work first (as each reports it; credited samples are backed by receipts its peers check)"));
        const lb = el("table");
        lb.id = "leaderboard-" + r.run_id;
        const lh = el("tr");
        for (const h of ["#", "peer", "shard", "device", "credited samples", "samples", "compute-seconds", "samples/s", "epoch", "state"]) lh.append(el("th", h));
        const lthead = el("thead");
        lthead.append(lh);
        const lbody = el("tbody");
        r.volunteers.forEach((v, i) => {
          const tr = el("tr");
          tr.append(el("td", String(i + 1), "num"), el("td", short(v.peer_id)), el("td", String(v.shard), "num"),
            el("td", v.device + (v.engine ? " · " + v.engine : "")), el("td", String(v.credit), "num"), el("td", String(v.processed), "num"),
            el("td", v.busy_seconds.toFixed(0), "num"), el("td", v.samples_per_s.toFixed(0), "num"),
            el("td", String(v.epoch), "num"), el("td", v.state));
          lbody.append(tr);
        });
        lb.append(lthead, lbody);
        sec.append(lb);
      }
      runs.append(sec);
    }
    document.body.dataset.runs = String(v.runs.length);
    document.body.dataset.volunteers = String(v.runs.reduce((n, r) => n + r.volunteers.length, 0));
  }

  async function poll() {
    try {
      const resp = await fetch("swarm.json", { cache: "no-store" });
      const v = await resp.json();
      if (!resp.ok) throw new Error(v.error || resp.statusText);
      render(v);
      $("error").hidden = true;
    } catch (err) {
      $("error").textContent = "Cannot read the swarm's state: " + err.message;
      $("error").hidden = false;
    }
  }
  poll();
  setInterval(poll, 5000);
})();
