// Keeps the swarm dashboard fresh: polls /dashboard/data and re-renders each panel with the same
// markup as app/templates/dashboard.html (keep the two in step). No framework, no build step.
(function () {
  "use strict";

  var body = document.body;
  var url = body.dataset.url;
  var pollMs = parseInt(body.dataset.pollMs, 10) || 2000;
  var ARC = 251.327;

  function esc(value) {
    return String(value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function num(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }
  function fix(n, places) {
    return Number(n).toFixed(places);
  }
  function put(id, html) {
    var element = document.getElementById(id);
    if (element) element.innerHTML = html;
  }

  function gauge(c) {
    var pct = Math.min(c.utilization_percent, 100);
    var heat = pct >= 90 ? "hot" : pct >= 70 ? "warm" : "";
    return '<svg viewBox="0 0 200 118" class="gauge" role="img" aria-label="capacity used ' + pct + '%">' +
      '<path d="M20 100 A80 80 0 0 1 180 100" class="gauge-track"/>' +
      '<path d="M20 100 A80 80 0 0 1 180 100" class="gauge-fill ' + heat + '" stroke-dasharray="' +
      fix(ARC * pct / 100, 2) + " " + ARC + '"/>' +
      '<text x="100" y="86" class="gauge-value">' + fix(pct, 1) + "%</text>" +
      '<text x="100" y="112" class="gauge-label">' + num(c.live_bots) + " / " + num(c.max_bots) +
      " bots</text></svg>" +
      '<p class="note">' + num(c.remaining) + " bots of capacity left</p>";
  }

  function rows(entries, label, bars, note) {
    var out = '<svg viewBox="0 0 320 ' + 40 * entries.length + '" class="bars" role="img" aria-label="' + label + '">';
    entries.forEach(function (entry, i) {
      var y = i * 40;
      out += '<text x="0" y="' + (y + 15) + '" class="bar-label">' + esc(entry[0]) + "</text>" +
        '<rect x="80" y="' + (y + 3) + '" width="230" height="16" class="bar-track"/>';
      var x = 80;
      bars(entry[1]).forEach(function (bar) {
        out += '<rect x="' + fix(x, 2) + '" y="' + (y + 3) + '" width="' + fix(bar[0], 2) +
          '" height="16" class="' + bar[1] + '"/>';
        x += bar[0];
      });
      out += '<text x="80" y="' + (y + 33) + '" class="bar-note">' + note(entry[1]) + "</text>";
    });
    return out + "</svg>";
  }

  function tiers(bots) {
    var entries = Object.entries(bots);
    var top = Math.max.apply(null, [1].concat(entries.map(function (e) { return e[1].active + e[1].paused; })));
    return rows(entries, "bots by tier and status",
      function (s) { return [[230 * s.active / top, "seg-active"], [230 * s.paused / top, "seg-paused"]]; },
      function (s) { return num(s.active) + " active · " + num(s.paused) + " paused · " + num(s.retired) + " retired"; });
  }

  function queues(q) {
    var entries = Object.entries(q);
    var top = Math.max.apply(null, [1].concat(entries.map(function (e) { return e[1].depth || 0; })));
    return rows(entries, "queue depth per tier",
      function (v) { return [[230 * (v.depth || 0) / top, "seg-queue"]]; },
      function (v) {
        return num(v.depth) + " messages" + (v.oldest_waiting_seconds === null ? "" :
          " · oldest task waiting " + fix(v.oldest_waiting_seconds, 1) + " s");
      });
  }

  function throughput(t) {
    if (!t.available) return '<p class="note">Throughput unavailable (Redis does not answer).</p>';
    var known = t.buckets.filter(function (b) { return b !== null; });
    var top = Math.max.apply(null, [1].concat(known));
    var width = 600 / t.buckets.length;
    var out = '<svg viewBox="0 0 600 150" class="chart" role="img" aria-label="task completions per ' +
      t.bucket_seconds + ' seconds"><line x1="0" y1="120" x2="600" y2="120" class="axis"/>' +
      '<text x="2" y="12" class="axis-label">' + num(Math.round(top)) + "</text>" +
      '<line x1="0" y1="16" x2="600" y2="16" class="grid"/>';
    t.buckets.forEach(function (b, i) {
      var x = fix(i * width + 2, 1), w = fix(width - 4, 1);
      if (b === null) {
        out += '<rect x="' + x + '" y="118" width="' + w + '" height="2" class="bucket-unknown"/>';
      } else {
        var h = 104 * b / top;
        out += '<rect x="' + x + '" y="' + fix(120 - h, 1) + '" width="' + w + '" height="' + fix(h, 1) +
          '" class="bucket"><title>' + num(Math.round(b)) + "</title></rect>";
      }
    });
    out += '<text x="0" y="140" class="axis-label" text-anchor="start">−' + t.window_seconds / 60 + " min</text>" +
      '<text x="300" y="140" class="axis-label" text-anchor="middle">−' + t.window_seconds / 120 + " min</text>" +
      '<text x="600" y="140" class="axis-label" text-anchor="end">now</text></svg>';
    var last = t.completions_last_minute;
    return out + '<p class="note">' + (last === null ? "Collecting samples…" :
      num(last) + " completions in the last minute (" + fix(last / 60, 1) + "/s)") + "</p>";
  }

  function services(s) {
    if (!s.items.length) return '<p class="note">' + esc(s.message) + "</p>";
    return '<ul class="services">' + s.items.map(function (v) {
      var detail = v.configured ? v.healthy + "/" + v.urls + " URLs healthy" +
        (v.open_breakers ? " · " + v.open_breakers + " breaker open" : "") +
        (v.in_flight ? " · " + v.in_flight + " in flight" : "") : "no URL";
      return '<li data-service="' + esc(v.name) + '"><svg viewBox="0 0 10 10" class="dot"><circle cx="5" cy="5" r="4" class="state-' +
        esc(v.state.replace(/ /g, "-")) + '"/></svg> <span class="service-name">' + esc(v.name) +
        '</span> <span class="service-state">' + esc(v.state) + '</span> <span class="service-detail">' +
        detail + "</span></li>";
    }).join("") + "</ul>";
  }

  function swarms(items) {
    if (!items.length) return '<p class="note">No swarms yet.</p>';
    return '<ul class="swarms">' + items.map(function (s) {
      var done = s.assigned ? 1000 * s.completed / s.assigned : 0;
      var bad = s.assigned ? 1000 * s.failed / s.assigned : 0;
      return '<li class="swarm" data-swarm-id="' + esc(s.id) + '" data-progress="' + s.progress +
        '" data-completed="' + s.completed + '"><div class="swarm-head"><span class="swarm-name">' +
        esc(s.name) + '</span> <span class="badge tier-' + esc(s.tier) + '">' + esc(s.tier) +
        '</span> <span class="badge status-' + esc(s.status) + '">' + esc(s.status) +
        '</span> <span class="swarm-bots">' + num(s.bot_count) + " bots</span></div>" +
        '<svg viewBox="0 0 1000 14" preserveAspectRatio="none" class="progress" role="img" aria-label="' +
        esc(s.name) + ' progress"><rect x="0" y="0" width="1000" height="14" class="bar-track"/>' +
        '<rect x="0" y="0" width="' + fix(done, 1) + '" height="14" class="seg-done"/>' +
        '<rect x="' + fix(done, 1) + '" y="0" width="' + fix(bad, 1) + '" height="14" class="seg-failed"/></svg>' +
        '<div class="swarm-figures"><span class="swarm-progress">' + (s.assigned ? num(s.completed) + " / " +
        num(s.assigned) + " completed (" + fix(s.progress * 100, 1) + "%)" : "no tasks given yet") + "</span>" +
        (s.failed ? ' · <span class="failed">' + num(s.failed) + " failed</span>" : "") +
        (s.cancelled ? " · " + num(s.cancelled) + " cancelled" : "") + "</div></li>";
    }).join("") + "</ul>";
  }

  function massActions(items) {
    if (!items.length) return '<p class="note">No mass-action running.</p>';
    return '<ul class="swarms">' + items.map(function (m) {
      var total = Math.max(m.total, 1);
      var done = 1000 * m.completed / total, bad = 1000 * m.failed / total;
      var off = 1000 * m.cancelled / total, busy = 1000 * m.running / total;
      return '<li class="mass-action" data-mass-action-id="' + esc(m.id) + '" data-percent="' + m.percent +
        '" data-completed="' + m.completed + '"><div class="swarm-head"><span class="swarm-name">' +
        esc(m.id) + '</span> <span class="badge">' + esc(m.task_type) + '</span> <span class="badge tier-' +
        esc(m.tier) + '">' + esc(m.tier) + '</span> <span class="swarm-bots">swarm ' + esc(m.swarm_id) +
        "</span></div>" +
        '<svg viewBox="0 0 1000 14" preserveAspectRatio="none" class="progress" role="img" aria-label="' +
        esc(m.id) + ' progress"><rect x="0" y="0" width="1000" height="14" class="bar-track"/>' +
        '<rect x="0" y="0" width="' + fix(done, 1) + '" height="14" class="seg-done"/>' +
        '<rect x="' + fix(done, 1) + '" y="0" width="' + fix(bad, 1) + '" height="14" class="seg-failed"/>' +
        '<rect x="' + fix(done + bad, 1) + '" y="0" width="' + fix(off, 1) + '" height="14" class="seg-cancelled"/>' +
        '<rect x="' + fix(done + bad + off, 1) + '" y="0" width="' + fix(busy, 1) + '" height="14" class="seg-active"/></svg>' +
        '<div class="swarm-figures"><span class="mass-action-progress">' +
        num(m.completed + m.failed + m.cancelled) + " / " + num(m.total) + " ended (" + fix(m.percent, 1) +
        "%)</span>" + (m.running ? " · " + num(m.running) + " running" : "") +
        (m.failed ? ' · <span class="failed">' + num(m.failed) + " failed</span>" : "") +
        (m.cancelled ? " · " + num(m.cancelled) + " cancelled" : "") +
        (m.tasks_per_second ? " · " + num(Math.round(m.tasks_per_second)) + "/s" : "") +
        (m.eta_seconds ? " · ETA " + fix(m.eta_seconds, 0) + " s" : "") + "</div></li>";
    }).join("") + "</ul>";
  }

  function health(h, generatedAt) {
    return '<span class="chip ' + (h.postgres === "connected" ? "ok" : "bad") + '">PostgreSQL ' + esc(h.postgres) + "</span> " +
      '<span class="chip ' + (h.redis === "connected" ? "ok" : "bad") + '">Redis ' + esc(h.redis) + "</span> " +
      '<span class="chip">' + (h.last_chunk_completed_seconds_ago === null ? "no chunk finished yet" :
        "last chunk " + fix(h.last_chunk_completed_seconds_ago, 1) + " s ago") + "</span> " +
      '<span class="chip" id="updated">updated ' + esc(generatedAt.slice(11, 19)) + " UTC</span>";
  }

  function render(data) {
    put("health", health(data.health, data.generated_at));
    put("capacity", gauge(data.capacity));
    put("tiers", tiers(data.bots));
    put("queues", queues(data.queues));
    put("throughput", throughput(data.throughput));
    put("services", services(data.services));
    put("mass-actions", massActions(data.mass_actions));
    put("swarms", swarms(data.swarms));
  }

  // The API key comes in the page's fragment (/dashboard#key=...), which browsers never send to
  // the server or write into logs; it is kept for this tab only.
  var fragmentKey = /(?:^#|&)key=([^&]+)/.exec(window.location.hash);
  if (fragmentKey) {
    sessionStorage.setItem("orchestratorKey", decodeURIComponent(fragmentKey[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  var apiKey = sessionStorage.getItem("orchestratorKey");
  var requestHeaders = { Accept: "application/json" };
  if (apiKey) requestHeaders.Authorization = "Bearer " + apiKey;

  function poll() {
    fetch(url, { headers: requestHeaders, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        render(data);
        body.classList.remove("stale");
        body.dataset.polls = String(parseInt(body.dataset.polls, 10) + 1);
      })
      .catch(function () {
        body.classList.add("stale");
      })
      .then(function () {
        setTimeout(poll, pollMs);
      });
  }

  setTimeout(poll, pollMs);
})();
