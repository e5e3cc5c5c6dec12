// failover-monitor dashboard: live updates through Server-Sent Events (no polling), actions through the
// API with the operator's bearer token after a confirmation dialog. Only textContent and classes are set.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const tokenInput = $("#token");
  tokenInput.value = sessionStorage.getItem("failover-token") || "";
  tokenInput.addEventListener("change", () => sessionStorage.setItem("failover-token", tokenInput.value));
  $("#token-form").addEventListener("submit", (e) => e.preventDefault());

  function currentStep(job) {
    for (const want of ["running", "pending"]) {
      const s = job.steps.find((x) => x.state === want);
      if (s) return s.step;
    }
    return "-";
  }

  function phaseState(job, names) {
    const st = job.steps.filter((s) => names.includes(s.step)).map((s) => s.state);
    if (st.includes("failed")) return "failed";
    if (st.length && st.every((s) => s === "done" || s === "skipped")) return "done";
    if (st.some((s) => s === "running" || s === "done")) return "running";
    return "pending";
  }

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

  function onJob(job) {
    let row = document.getElementById("job-" + job.job);
    const table = $("#jobs tbody");
    if (!row && table) {
      row = document.createElement("tr");
      row.id = "job-" + job.job;
      row.dataset.job = job.job;
      const link = document.createElement("a");
      link.href = "/jobs/" + job.job; link.textContent = "#" + job.job;
      const first = document.createElement("td"); first.appendChild(link); row.appendChild(first);
      row.appendChild(cell(job.server));
      const st = cell(job.state); st.className = "job-state"; row.appendChild(st);
      const sp = cell(currentStep(job)); sp.className = "job-step"; row.appendChild(sp);
      const spare = cell(job.spare || ""); spare.className = "job-spare"; row.appendChild(spare);
      table.prepend(row);
    }
    const page = $("#job");
    const roots = [row, page && page.dataset.job === String(job.job) ? page : null];
    for (const root of roots) {
      if (!root) continue;
      $(".job-state", root).textContent = job.state;
      $(".job-step", root).textContent = currentStep(job);
      $(".job-spare", root).textContent = job.spare || (root === page ? "?" : "");
    }
    if (page && page.dataset.job === String(job.job)) {
      for (const s of job.steps) {
        const li = document.getElementById("step-" + s.step);
        if (!li) continue;
        li.className = "step " + s.state;
        $(".state", li).textContent = s.state;
        $(".detail", li).textContent = s.detail || "";
      }
      document.querySelectorAll("#timeline .phase").forEach((g) => {
        g.setAttribute("class", "phase " + phaseState(job, g.dataset.steps.split(" ")));
      });
    }
  }

  function onSpares(data) {
    for (const c of data.spares) {
      document.querySelectorAll(".spare-count").forEach((el) => {
        if (el.dataset.group === c.domain_group && el.dataset.model === c.model) {
          el.textContent = String(c.available);
        }
      });
    }
  }

  function onDecision(d) {
    const table = $("#decisions tbody");
    if (!table) return;
    const row = document.createElement("tr");
    for (const v of [d.time, d.server, d.action, d.rule || "", d.guard || ""]) row.appendChild(cell(v));
    const td = document.createElement("td");
    if (d.job) { const a = document.createElement("a"); a.href = "/jobs/" + d.job; a.textContent = "#" + d.job; td.appendChild(a); }
    row.appendChild(td);
    table.prepend(row);
    while (table.rows.length > 50) table.deleteRow(-1);
  }

  const live = $("#live");
  const source = new EventSource("/api/v1/stream");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  source.addEventListener("job", (e) => onJob(JSON.parse(e.data)));
  source.addEventListener("spares", (e) => onSpares(JSON.parse(e.data)));
  source.addEventListener("decision", (e) => onDecision(JSON.parse(e.data)));

  // --- actions: the API's own routes, with the token, after a confirmation -----------------------
  const author = "dashboard";
  const actions = {
    pause: () => ["POST", "/api/v1/pause", { reason: "paused from the dashboard" }, "Pause automatic failover?"],
    resume: () => ["DELETE", "/api/v1/pause", null, "Resume automatic failover?"],
    failover: (s) => ["POST", "/api/v1/failovers", { server: s, reason: "from the dashboard" }, "Fail " + s + " over to a spare now?"],
    silence: (s) => ["POST", "/api/v1/silences", { kind: "server", target: s, author: author, duration: "1h" }, "Silence " + s + " for 1 hour?"],
    spare: (s) => ["POST", "/api/v1/servers/" + encodeURIComponent(s) + "/spare", { author: author }, "Designate " + s + " a spare?"],
  };
  const dialog = $("#confirm");
  const result = $("#action-result");

  function confirmAction(text) {
    return new Promise((resolve) => {
      $("#confirm-text").textContent = text;
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  async function act(name, server) {
    const [method, url, body, question] = actions[name](server);
    if (!(await confirmAction(question))) { result.textContent = name + ": cancelled"; return; }
    const headers = { "Content-Type": "application/json" };
    if (tokenInput.value) headers.Authorization = "Bearer " + tokenInput.value;
    let text;
    try {
      const r = await fetch(url, { method: method, headers: headers, body: body ? JSON.stringify(body) : null });
      const data = await r.json().catch(() => ({}));
      text = name + ": " + r.status + " " + (data.error || (r.ok ? "done" : r.statusText));
      if (r.ok && (name === "pause" || name === "resume")) {
        $("#paused").textContent = name === "pause" ? "paused: " + body.reason : "on";
      }
    } catch (err) {
      text = name + ": " + err;
    }
    result.textContent = text;
  }

  document.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action]");
    if (b) act(b.dataset.action, b.dataset.server);
  });
})();
