// Strato studio: live logs and the quota a new cluster would use. The
// pages work without it (logs then show on reload).
"use strict";

function followLogs(pre) {
  const state = document.getElementById("logs-state");
  const events = new EventSource(pre.dataset.src);
  const say = (text) => { if (state) state.textContent = text; };
  say("Following the job's output…");
  events.addEventListener("line", (e) => {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(e.data + "\n");
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  });
  events.addEventListener("end", () => {
    say("The job ended.");
    events.close();
    // The facts above were read while it ran: show how it ended.
    if (pre.dataset.final === "false") location.reload();
  });
  events.addEventListener("failed", (e) => { say("Logs stopped: " + e.data); events.close(); });
  // A broken stream is reconnected by the browser, which sends the last
  // line's id: the control plane goes on from the next line. A refused
  // reconnection (signed out, the job gone) ends it.
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      say("Logs stopped: reload the page to follow again.");
    } else {
      say("Reconnecting to the job's output…");
    }
  };
  events.addEventListener("open", () => say("Following the job's output…"));
}

function quotaPreview(form) {
  const out = document.getElementById("quota-preview");
  const sizes = {};
  for (const li of document.querySelectorAll("#size-data li")) {
    sizes[li.dataset.size] = { vcpus: Number(li.dataset.vcpus), gpus: Number(li.dataset.gpus), family: li.dataset.family };
  }
  const quota = {};
  for (const li of document.querySelectorAll("#quota-data li")) {
    quota[li.dataset.quota] = { current: Number(li.dataset.current), limit: Number(li.dataset.limit) };
  }
  const update = () => {
    const size = sizes[form.elements.size.value];
    const nodes = Number(form.elements.max_nodes.value || 0);
    if (!size) { out.textContent = ""; return; }
    const lowPriority = form.elements.tier.value === "lowpriority";
    const name = lowPriority ? "lowPriority" : size.family;
    const line = quota[name];
    const cores = size.vcpus * nodes;
    let text = `At most ${nodes} nodes × ${size.vcpus} vCPUs = ${cores} vCPUs of ${name}`;
    if (line) {
      const left = line.limit - line.current;
      text += `; ${left} of ${line.limit} are free`;
      if (cores > left) text += " — more than is free: the cluster will grow only as far as the quota allows";
    }
    out.textContent = text + ".";
  };
  // The CPU/GPU choice filters the size list.
  const filter = () => {
    const gpu = form.elements.kind.value === "gpu";
    const select = form.elements.size;
    for (const option of select.options) {
      const size = sizes[option.value];
      option.hidden = Boolean(size) && (size.gpus > 0) !== gpu;
    }
    if (select.selectedOptions[0] && select.selectedOptions[0].hidden) {
      const first = Array.from(select.options).find((o) => !o.hidden);
      if (first) select.value = first.value;
    }
    update();
  };
  form.elements.kind.addEventListener("change", filter);
  const chosen = sizes[form.elements.size.value];
  if (chosen && chosen.gpus > 0) form.elements.kind.value = "gpu";
  form.addEventListener("input", update);
  filter();
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("logs");
  if (pre && pre.dataset.src) followLogs(pre);
  const form = document.getElementById("create-cluster");
  if (form) quotaPreview(form);
});
