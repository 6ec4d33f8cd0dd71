// Small progressive enhancements; every page works without this file.
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  // A form is sent once: the button is disabled after the first submit (the Idempotency-Key
  // in the form makes a second one harmless anyway).
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
    form.querySelectorAll("button[type=submit]").forEach((b) => { b.disabled = true; });
  });

  // The language menu sends itself.
  document.querySelectorAll("[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.requestSubmit ? select.form.requestSubmit() : select.form.submit());
  });
  document.querySelectorAll("[data-js-hide]").forEach((el) => { el.hidden = true; });

  // Typed confirmation: the erase button stays off until the exact word is typed.
  document.querySelectorAll("[data-confirm-word]").forEach((input) => {
    const button = input.form.querySelector("button[type=submit]");
    const sync = () => { button.disabled = input.value.trim() !== input.dataset.confirmWord; };
    input.addEventListener("input", sync); sync();
  });

  // Segment rule builder: the rows write the JSON rule; the JSON is what is sent.
  const builder = document.querySelector("[data-rule-builder]");
  if (builder) {
    const json = document.getElementById(builder.dataset.target);
    const fields = JSON.parse(builder.dataset.fields);
    const rows = builder.querySelector("[data-rows]");
    const template = builder.querySelector("template");
    const count = document.querySelector("[data-preview-count]");
    const status = document.querySelector("[data-preview-status]");
    const parseValue = (field, op, raw) => {
      const type = (fields[field] || {}).type;
      const one = (v) => {
        v = v.trim();
        if (type === "integer") return parseInt(v, 10);
        if (type === "number") return parseFloat(v);
        if (type === "boolean") return v === "true" || v === "1";
        return v;
      };
      if (op === "in" || op === "between") return raw.split(",").filter((v) => v.trim() !== "").map(one);
      return one(raw);
    };
    const syncOps = (row) => {
      const field = row.querySelector("[name=b_field]").value;
      const opSelect = row.querySelector("[name=b_op]");
      const ops = (fields[field] || {}).ops || [];
      const current = opSelect.value;
      opSelect.innerHTML = "";
      ops.forEach((op) => { const o = document.createElement("option"); o.value = op; o.textContent = op; opSelect.appendChild(o); });
      if (ops.includes(current)) opSelect.value = current;
    };
    const write = () => {
      const conditions = [];
      rows.querySelectorAll(".rule-row").forEach((row) => {
        const field = row.querySelector("[name=b_field]").value;
        const op = row.querySelector("[name=b_op]").value;
        const raw = row.querySelector("[name=b_value]").value;
        if (field && op && raw.trim() !== "") conditions.push({ field, op, value: parseValue(field, op, raw) });
      });
      if (!conditions.length) return;
      const join = builder.querySelector("[name=b_join]").value;
      const rule = conditions.length === 1 ? conditions[0] : { [join]: conditions };
      json.value = JSON.stringify(rule, null, 2);
      preview();
    };
    rows.addEventListener("change", (e) => { if (e.target.name === "b_field") syncOps(e.target.closest(".rule-row")); write(); });
    rows.addEventListener("input", write);
    builder.querySelector("[name=b_join]").addEventListener("change", write);
    builder.querySelector("[data-add-row]").addEventListener("click", () => {
      rows.appendChild(template.content.cloneNode(true));
      syncOps(rows.lastElementChild);
    });
    rows.addEventListener("click", (e) => {
      if (e.target.matches("[data-remove-row]") && rows.children.length > 1) { e.target.closest(".rule-row").remove(); write(); }
    });
    rows.querySelectorAll(".rule-row").forEach((row) => { if (!row.querySelector("[name=b_op]").options.length) syncOps(row); });
    builder.hidden = false;

    let timer = null;
    const preview = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        let rule;
        try { rule = JSON.parse(json.value); } catch (err) { status.textContent = status.dataset.badJson; return; }
        status.textContent = status.dataset.counting;
        try {
          const response = await fetch("/api/segments/preview", {
            method: "POST", credentials: "same-origin",
            headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
            body: JSON.stringify({ rule }),
          });
          const body = await response.json();
          if (response.ok) { count.textContent = body.count; status.textContent = ""; }
          else { status.textContent = body.detail || body.title; }
        } catch (err) { status.textContent = String(err); }
      }, 350);
    };
    json.addEventListener("input", preview);
  }

  // Bulk issue progress: follows the job until it ends, then reloads for the final figures.
  const job = document.querySelector("[data-job]");
  if (job && !["completed", "failed"].includes(job.dataset.status)) {
    const bar = job.querySelector("progress");
    const label = job.querySelector(".progress-label");
    const tick = async () => {
      try {
        const response = await fetch("/api/jobs/" + encodeURIComponent(job.dataset.job), { credentials: "same-origin" });
        const body = await response.json();
        if (response.ok) {
          if (body.total) { bar.max = body.total; bar.value = body.processed; }
          label.textContent = body.processed + " / " + (body.total ?? "?") + " · " + body.status;
          job.dataset.status = body.status;
          if (body.status === "completed" || body.status === "failed") { window.location.reload(); return; }
        }
      } catch (err) { /* try again */ }
      setTimeout(tick, 700);
    };
    setTimeout(tick, 400);
  }
})();
