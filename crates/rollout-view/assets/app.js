// rollout view: a small vanilla-JS app. In the server it reads the JSON API under /api; in a
// report it reads the data embedded in the page (the JSON element #rollout-data) and routes by the
// URL fragment. Every value from a job directory is set as text, never as markup.
(function () {
  "use strict";
  var embedded = document.getElementById("rollout-data");
  var DATA = embedded ? JSON.parse(embedded.textContent) : null;
  var REPORT = !!DATA;
  var app = document.getElementById("app");
  var timer = null;
  var state = { sort: { key: "name", dir: 1 }, filters: {}, limit: 500 };

  // ---------- helpers ----------
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = v;
        else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
        // Through the CSSOM: the server's Content-Security-Policy blocks style attributes.
        else if (k === "style") el.style.cssText = v;
        else el.setAttribute(k, v);
      }
    }
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, c) {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { add(el, x); }); return; }
    el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  function fmt(x, d) {
    if (x === null || x === undefined || isNaN(x)) return "–";
    return Number(x).toFixed(d === undefined ? 3 : d);
  }
  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
  function dur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " m";
  }
  function bytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }
  function status(s) { return h("span", { class: "status status-" + s, text: s }); }
  function passk(m) {
    var ks = Object.keys(m || {});
    if (!ks.length) return "–";
    return ks.map(function (k) { return "@" + k + " " + fmt(m[k], 2); }).join("  ");
  }
  function enc(s) { return encodeURIComponent(s); }

  // ---------- routing ----------
  function href(route) {
    if (REPORT) return route.trial ? "#/trials/" + enc(route.trial) : "#/";
    if (route.compare) return "/compare?a=" + enc(route.compare[0]) + "&b=" + enc(route.compare[1]);
    if (route.trial) return "/jobs/" + enc(route.job) + "/trials/" + enc(route.trial);
    if (route.job) return "/jobs/" + enc(route.job);
    return "/";
  }
  function current() {
    if (REPORT) {
      var m = location.hash.match(/^#\/trials\/(.+)$/);
      return m ? { job: DATA.job.summary.id, trial: decodeURIComponent(m[1]) } : { job: DATA.job.summary.id };
    }
    var p = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
    if (p[0] === "compare") {
      var q = new URLSearchParams(location.search);
      return { compare: [q.get("a") || "", q.get("b") || ""] };
    }
    if (p[0] === "jobs" && p[2] === "trials") return { job: p[1], trial: p.slice(3).join("/") };
    if (p[0] === "jobs") return { job: p[1] };
    return {};
  }
  function link(route, text, attrs) {
    var a = h("a", Object.assign({ href: href(route), text: text }, attrs || {}));
    if (!REPORT) {
      a.addEventListener("click", function (ev) {
        if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
        ev.preventDefault();
        history.pushState(null, "", a.getAttribute("href"));
        state.limit = 500;
        render();
      });
    }
    return a;
  }

  // ---------- data ----------
  function api(path) {
    if (!REPORT) {
      return fetch(path, { cache: "no-store" }).then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body && body.error ? body.error : r.status + " " + r.statusText);
          return body;
        });
      });
    }
    var job = DATA.job;
    var p = path.split("/").filter(Boolean).map(decodeURIComponent);
    if (p.length === 2) return Promise.resolve([job.summary]);
    if (p.length === 3) return Promise.resolve(job);
    var name = p[4];
    var d = DATA.details[name];
    if (d) return Promise.resolve(d);
    var row = job.trials.filter(function (t) { return t.name === name; })[0];
    if (!row) return Promise.reject(new Error("no such trial"));
    return Promise.resolve({ row: row, omitted: true, logs: [], artifacts: [], files: [], steps: [], previous_tries: [], timings: {} });
  }

  function frame(crumbs, body) {
    var top = h("header", { class: "top" },
      REPORT ? h("span", { class: "brand", text: "rollout report" }) : link({}, "rollout view", { class: "brand" }),
      h("span", { class: "crumbs" }, crumbs));
    app.replaceChildren(top, h("main", null, body));
  }

  function schedule(live, again) {
    if (timer) { clearTimeout(timer); timer = null; }
    if (live && !REPORT) timer = setTimeout(again, 2000);
  }

  // ---------- job list ----------
  function jobList() {
    return api("/api/jobs").then(function (jobs) {
      var rows = [];
      jobs.forEach(function (j) {
        var groups = j.groups.length ? j.groups : [null];
        groups.forEach(function (g, i) {
          rows.push(h("tr", { class: i === 0 ? "job-row" : "group-row", "data-job": j.id },
            i === 0 ? [
              h("td", { rowspan: groups.length }, link({ job: j.id }, j.name), h("div", { class: "muted", text: j.dir })),
              h("td", { rowspan: groups.length }, status(j.status)),
              h("td", { class: "num", rowspan: groups.length, text: j.n_finished + " / " + j.n_total }),
              h("td", { class: "num", rowspan: groups.length, text: j.n_errors }),
              h("td", { class: "num", rowspan: groups.length, text: dur(j.seconds) })
            ] : null,
            g ? [
              h("td", { text: g.agent }), h("td", { text: g.dataset }),
              h("td", { class: "num", text: g.n }),
              h("td", { class: "num mean", text: fmt(g.mean_reward) }),
              h("td", { class: "num", text: pct(g.pass_rate) }),
              h("td", { text: passk(g.pass_at_k) }),
              h("td", { class: "num", text: g.n_errors })
            ] : h("td", { colspan: 7, class: "muted", text: "no trials yet" })));
        });
      });
      var ids = jobs.map(function (j) { return j.id; });
      var selA = h("select", { id: "cmp-a" }, ids.map(function (id) { return h("option", { value: id, text: id }); }));
      var selB = h("select", { id: "cmp-b" }, ids.map(function (id) { return h("option", { value: id, text: id }); }));
      if (ids.length > 1) selB.value = ids[1];
      var compare = REPORT || ids.length < 2 ? null : h("div", { class: "filters" }, "Compare ", selA, " with ", selB,
        h("button", { onclick: function () { location.href = href({ compare: [selA.value, selB.value] }); }, text: "Compare" }));
      frame([], [
        h("h1", { text: "Jobs" }),
        jobs.length ? h("table", { id: "jobs" },
          h("thead", null, h("tr", null, ["Job", "Status", "Trials", "Errors", "Duration", "Agent", "Dataset", "n", "Mean reward", "Pass rate", "pass@k", "Errors"].map(function (c) { return h("th", { text: c }); }))),
          h("tbody", null, rows)) : h("p", { class: "note", text: "No job directories found." }),
        compare
      ]);
      schedule(jobs.some(function (j) { return j.status === "running" || j.status === "paused"; }), render);
    });
  }

  // ---------- job page ----------
  function bars(entries, unit) {
    var max = Math.max.apply(null, entries.map(function (e) { return e[1]; }).concat([1e-9]));
    return h("div", { class: "bars" }, entries.map(function (e) {
      return h("div", { class: "bar-row" },
        h("span", { class: "lbl", text: e[0], title: e[0] }),
        h("div", null, h("div", { class: "bar", style: "width:" + (100 * e[1] / max).toFixed(1) + "%" })),
        h("span", { class: "num", text: unit === "s" ? dur(e[1]) : String(e[1]) }));
    }));
  }

  var COLS = [
    ["name", "Trial"], ["task", "Task"], ["agent", "Agent"], ["dataset", "Dataset"], ["attempt", "Try"],
    ["status", "Status"], ["reward", "Reward"], ["error_kind", "Error"], ["seconds", "Duration"]
  ];

  function matches(t, f) {
    if (f.task && t.task.toLowerCase().indexOf(f.task.toLowerCase()) < 0 && t.name.toLowerCase().indexOf(f.task.toLowerCase()) < 0) return false;
    if (f.agent && t.agent !== f.agent) return false;
    if (f.error) {
      if (f.error === "(none)" ? !!t.error_kind : t.error_kind !== f.error) return false;
    }
    if (f.status && t.status !== f.status) return false;
    var r = t.reward === null ? null : t.reward;
    if (f.rmin !== undefined && f.rmin !== "" && (r === null || r < Number(f.rmin))) return false;
    if (f.rmax !== undefined && f.rmax !== "" && (r === null || r > Number(f.rmax))) return false;
    return true;
  }

  function sortRows(rows) {
    var k = state.sort.key, d = state.sort.dir;
    return rows.slice().sort(function (a, b) {
      var x = a[k], y = b[k];
      if (x === y) return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * d;
    });
  }

  function jobPage(route) {
    var id = route.job;
    return api("/api/jobs/" + enc(id)).then(function (job) {
      var s = job.summary, trials = job.trials, f = state.filters;
      var live = s.status === "running" || s.status === "paused";
      var again = function () { if (sameRoute(route)) render(); };
      // A live refresh that brings nothing new leaves the page (and the focus) alone.
      var key = location.href + JSON.stringify([trials, s.status, s.n_total]);
      if (state.shown === key) { schedule(live, again); return; }
      state.shown = key;
      var agents = uniq(trials.map(function (t) { return t.agent; }));
      var errors = Object.keys(job.error_counts);
      var tbody = h("tbody");
      var count = h("span", { class: "muted", id: "shown" });
      var more = h("div", { class: "more" });
      function fill() {
        var shown = sortRows(trials.filter(function (t) { return matches(t, f); }));
        count.textContent = shown.length + " of " + trials.length + " trials";
        tbody.replaceChildren.apply(tbody, shown.slice(0, state.limit).map(function (t) {
          return h("tr", { class: "trial-row", "data-trial": t.name },
            h("td", null, link({ job: id, trial: t.name }, t.name)),
            h("td", { class: "task", text: t.task }), h("td", { text: t.agent + (t.model ? " (" + t.model + ")" : "") }),
            h("td", { text: t.dataset }), h("td", { class: "num", text: t.attempt === null ? "" : t.attempt }),
            h("td", null, status(t.status)),
            h("td", { class: "num reward", text: fmt(t.reward) }),
            h("td", { class: "error-kind", text: t.error_kind || "" }),
            h("td", { class: "num", text: dur(t.seconds) }));
        }));
        more.replaceChildren.apply(more, shown.length > state.limit ? [h("button", {
          text: "Show " + Math.min(500, shown.length - state.limit) + " more",
          onclick: function () { state.limit += 500; fill(); }
        })] : []);
      }
      var head = h("tr", null, COLS.map(function (c) {
        var cls = "sortable" + (state.sort.key === c[0] ? (state.sort.dir > 0 ? " sorted-asc" : " sorted-desc") : "");
        return h("th", { class: cls, "data-key": c[0], text: c[1], onclick: function () {
          state.sort = { key: c[0], dir: state.sort.key === c[0] ? -state.sort.dir : 1 };
          head.querySelectorAll("th").forEach(function (th) {
            th.className = "sortable" + (th.getAttribute("data-key") === state.sort.key ? (state.sort.dir > 0 ? " sorted-asc" : " sorted-desc") : "");
          });
          fill();
        } });
      }));
      function input(key, attrs) {
        var el = h(attrs.tag || "input", Object.assign({ id: "f-" + key }, attrs.a || {}), attrs.children);
        el.value = f[key] || "";
        el.addEventListener("input", function () { f[key] = el.value; state.limit = 500; fill(); });
        return el;
      }
      function opts(label, list) {
        return [h("option", { value: "", text: label })].concat(list.map(function (x) { return h("option", { value: x, text: x }); }));
      }
      var hist = job.histogram, histEntries = hist.bins.map(function (n, i) {
        return [(i / 10).toFixed(1) + "–" + ((i + 1) / 10).toFixed(1), n];
      });
      if (hist.no_reward) histEntries.unshift(["no reward", hist.no_reward]);
      if (hist.below) histEntries.unshift(["< 0", hist.below]);
      if (hist.above) histEntries.push(["> 1", hist.above]);
      var phases = Object.keys(job.phase_means).map(function (p) { return [p, job.phase_means[p]]; });
      var o = s.overall;
      frame([link({}, "jobs"), " / ", s.name], [
        h("h1", null, s.name, " ", status(s.status)),
        h("div", { class: "muted", text: s.dir + (s.started_at ? " · started " + s.started_at : "") + " · " + s.format }),
        h("div", { class: "cards" },
          card("trials", s.n_finished + " / " + s.n_total + (s.n_running ? " (" + s.n_running + " running)" : "")),
          card("mean reward", fmt(o.mean_reward)), card("pass rate", pct(o.pass_rate)),
          card("pass@k", passk(o.pass_at_k)), card("errors", s.n_errors), card("duration", dur(s.seconds))),
        h("h2", { text: "Agents × datasets" }),
        h("table", { id: "groups" },
          h("thead", null, h("tr", null, ["Agent", "Dataset", "n", "Mean reward", "Pass rate", "pass@k", "Errors", "Running"].map(function (c) { return h("th", { text: c }); }))),
          h("tbody", null, s.groups.map(function (g) {
            return h("tr", null, h("td", { text: g.agent }), h("td", { text: g.dataset }), h("td", { class: "num", text: g.n }),
              h("td", { class: "num", text: fmt(g.mean_reward) }), h("td", { class: "num", text: pct(g.pass_rate) }),
              h("td", { text: passk(g.pass_at_k) }), h("td", { class: "num", text: g.n_errors }), h("td", { class: "num", text: g.n_running }));
          }))),
        h("div", { class: "row2" },
          h("div", null, h("h2", { text: "Reward distribution" }), h("div", { id: "reward-hist" }, bars(histEntries))),
          h("div", null, h("h2", { text: "Mean time per phase" }), h("div", { id: "phase-bars" }, phases.length ? bars(phases, "s") : h("p", { class: "note", text: "No phase timings." })))),
        errors.length ? [h("h2", { text: "Errors" }), h("div", { id: "error-bars" }, bars(errors.map(function (e) { return [e, job.error_counts[e]]; })))] : null,
        h("h2", { text: "Trials" }),
        h("div", { class: "filters" },
          input("task", { a: { placeholder: "task or trial", type: "search" } }),
          input("agent", { tag: "select", children: opts("all agents", agents) }),
          input("status", { tag: "select", children: opts("any status", ["ok", "error", "cancelled", "running", "unfinished"]) }),
          input("error", { tag: "select", children: opts("any error", ["(none)"].concat(errors)) }),
          "reward ", input("rmin", { a: { type: "number", step: "any", placeholder: "min", style: "width:6em" } }),
          "to ", input("rmax", { a: { type: "number", step: "any", placeholder: "max", style: "width:6em" } }),
          count),
        h("table", { id: "trials" }, h("thead", null, head), tbody),
        more
      ]);
      fill();
      schedule(live, again);
    });
  }
  function card(k, v) { return h("div", { class: "card" }, h("div", { class: "v", text: v }), h("div", { class: "k", text: k })); }
  function uniq(a) { return a.filter(function (x, i) { return a.indexOf(x) === i; }).sort(); }
  function sameRoute(r) { return JSON.stringify(current()) === JSON.stringify(r); }

  // ---------- trial page ----------
  function fileLink(job, path, label) {
    if (REPORT) return h("span", { text: label || path });
    return h("a", { href: "/api/jobs/" + enc(job) + "/files/" + path.split("/").map(enc).join("/"), text: label || path, download: "" });
  }

  function stepView(s) {
    return h("div", { class: "step source-" + s.source, "data-step": s.index },
      h("div", { class: "step-head" },
        h("span", { text: "step " + s.index }), h("span", { text: s.source }),
        s.timestamp ? h("span", { text: s.timestamp }) : null,
        s.input_tokens !== null && s.input_tokens !== undefined ? h("span", { text: s.input_tokens + " in / " + (s.output_tokens || 0) + " out tokens" }) : null,
        s.latency_ms ? h("span", { text: s.latency_ms + " ms" }) : null),
      s.text ? h("pre", { class: "step-text", text: s.text }) : null,
      s.reasoning ? h("details", null, h("summary", { text: "reasoning" }), h("pre", { text: s.reasoning })) : null,
      (s.tool_calls || []).map(function (c) {
        return h("div", { class: "tool-call" },
          h("div", null, h("span", { class: "tool-name", text: c.name }), c.seconds !== null && c.seconds !== undefined ? h("span", { class: "muted", text: "  " + dur(c.seconds) }) : null),
          h("pre", { class: "tool-args", text: typeof c.arguments === "string" ? c.arguments : JSON.stringify(c.arguments, null, 2) }),
          c.output !== null && c.output !== undefined ? h("pre", { class: "tool-output", text: c.output }) : null);
      }),
      (s.observations || []).map(function (o) { return h("pre", { class: "observation", text: o }); }));
  }

  function trialPage(route) {
    var id = route.job, name = route.trial;
    return api("/api/jobs/" + enc(id) + "/trials/" + enc(name)).then(function (d) {
      var t = d.row;
      var rewardKeys = Object.keys(t.rewards || {});
      var phases = Object.keys(t.phases || {}).map(function (p) { return [p, t.phases[p]]; });
      var tr = d.trajectory;
      frame([link({}, "jobs"), " / ", link({ job: id }, REPORT ? "job" : id), " / ", name], [
        h("h1", null, name, " ", status(t.status)),
        h("div", { class: "cards" },
          card("task", t.task), card("agent", t.agent + (t.model ? " (" + t.model + ")" : "")),
          card("reward", fmt(t.reward)), card("duration", dur(t.seconds)), t.attempt ? card("attempt", t.attempt) : null),
        d.omitted ? h("p", { class: "note", text: "Logs and trajectory of this trial are not embedded in the report (size budget); open the job with rollout view." }) : null,
        d.error ? h("div", { class: "error-box", id: "error" },
          h("strong", { text: d.error.kind }), h("pre", { text: d.error.message }),
          d.error.log ? h("div", null, "log: ", fileLink(id, d.error.log)) : null) : null,
        h("h2", { text: "Rewards" }),
        rewardKeys.length ? h("table", { id: "rewards" }, h("tbody", null, rewardKeys.map(function (k) {
          return h("tr", null, h("th", { text: k }), h("td", { class: "num", text: fmt(t.rewards[k]) }));
        }))) : h("p", { class: "note", text: "No reward." }),
        (d.steps || []).length ? [h("h2", { text: "Steps" }), h("table", { id: "task-steps" },
          h("thead", null, h("tr", null, ["Step", "Reward", "Error", "Duration"].map(function (c) { return h("th", { text: c }); }))),
          h("tbody", null, d.steps.map(function (s) {
            return h("tr", null, h("td", { text: s.step_name }), h("td", { class: "num", text: fmt(s.reward) }),
              h("td", { text: s.error ? (s.error.type || s.error.exception_type || "error") + ": " + (s.error.message || s.error.exception_message || "") : "" }),
              h("td", { class: "num", text: dur(s.seconds) }));
          })))] : null,
        h("h2", { text: "Timings" }),
        phases.length ? h("div", { id: "trial-phases" }, bars(phases, "s")) : h("p", { class: "note", text: "No phase timings." }),
        d.instruction ? [h("h2", { text: "Instruction" }), h("pre", { id: "instruction", text: d.instruction })] : null,
        h("h2", { text: "Trajectory" }),
        tr ? h("div", { id: "trajectory" },
          h("div", { class: "muted", text: tr.file + " · " + tr.format + (tr.model ? " · " + tr.model : "") + " · " + tr.steps.length + " steps" + (tr.stop_reason ? " · stopped: " + tr.stop_reason : "") }),
          tr.steps.map(stepView)) : h("p", { class: "note", text: "No trajectory (the agent did not write one)." }),
        h("h2", { text: "Logs" }),
        d.logs.length ? d.logs.map(function (l, i) {
          return h("details", { class: "log", open: i < 2 ? "" : null },
            h("summary", null, l.path + " (" + bytes(l.bytes) + (l.truncated ? ", last part shown" : "") + ") ", fileLink(id, l.path, "download")),
            h("pre", { text: l.text }));
        }) : h("p", { class: "note", text: "No logs." }),
        h("h2", { text: "Artifacts" }),
        d.artifacts.length ? h("ul", { id: "artifacts" }, d.artifacts.map(function (a) {
          return h("li", null, fileLink(id, a.path), h("span", { class: "muted", text: " " + bytes(a.bytes) }));
        })) : h("p", { class: "note", text: "No artifacts." }),
        d.files.length ? h("details", null, h("summary", { text: "All files (" + d.files.length + ")" }),
          h("ul", null, d.files.map(function (a) {
            return h("li", null, fileLink(id, a.path), h("span", { class: "muted", text: " " + bytes(a.bytes) }));
          }))) : null
      ]);
      schedule(t.status === "running", function () { if (sameRoute(route)) render(); });
    });
  }

  // ---------- compare ----------
  function comparePage(route) {
    var a = route.compare[0], b = route.compare[1];
    return api("/api/compare?a=" + enc(a) + "&b=" + enc(b)).then(function (r) {
      var c = r.comparison;
      function delta(x) {
        if (x === null || x === undefined) return h("span", { class: "muted", text: "–" });
        return h("span", { class: x > 0 ? "delta-pos" : x < 0 ? "delta-neg" : "", text: (x > 0 ? "+" : "") + fmt(x) });
      }
      frame([link({}, "jobs"), " / compare"], [
        h("h1", null, "Compare ", link({ job: a }, r.a.name), " → ", link({ job: b }, r.b.name)),
        h("div", { class: "cards", id: "compare-summary" },
          card("pass rate A", pct(c.pass_rate_a) + " (" + c.passed_a + "/" + c.n_a + ")"),
          card("pass rate B", pct(c.pass_rate_b) + " (" + c.passed_b + "/" + c.n_b + ")"),
          card("difference B − A", c.pass_rate_delta === null ? "–" : (c.pass_rate_delta >= 0 ? "+" : "") + (100 * c.pass_rate_delta).toFixed(1) + " pp"),
          card("95% CI (Newcombe)", c.ci95 ? (100 * c.ci95[0]).toFixed(1) + " to " + (100 * c.ci95[1]).toFixed(1) + " pp" : "–")),
        h("h2", { text: "Per task" }),
        h("table", { id: "compare-tasks" },
          h("thead", null, h("tr", null, ["Task", "n A", "Mean A", "n B", "Mean B", "Change"].map(function (x) { return h("th", { text: x }); }))),
          h("tbody", null, c.tasks.map(function (t) {
            return h("tr", null, h("td", { text: t.task }), h("td", { class: "num", text: t.n_a }), h("td", { class: "num", text: fmt(t.mean_a) }),
              h("td", { class: "num", text: t.n_b }), h("td", { class: "num", text: fmt(t.mean_b) }), h("td", { class: "num" }, delta(t.delta)));
          })))
      ]);
    });
  }

  function render() {
    var r = current();
    if (JSON.stringify(r) !== state.route) { state.route = JSON.stringify(r); state.shown = null; }
    var p = r.compare ? comparePage(r) : r.trial ? trialPage(r) : r.job ? jobPage(r) : jobList();
    p.then(function () { document.body.setAttribute("data-ready", "1"); }, function (e) {
      frame([link({}, "jobs")], [h("div", { class: "error-box", id: "load-error" }, h("strong", { text: "Could not load this page: " }), String(e && e.message || e))]);
      document.body.setAttribute("data-ready", "1");
    });
  }

  window.addEventListener(REPORT ? "hashchange" : "popstate", function () { state.limit = 500; render(); });
  render();
})();
