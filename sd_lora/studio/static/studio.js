// sd-lora studio: the little JavaScript the pages need (no libraries). Live run progress by polling.
"use strict";
const studio = {
  async post(url, body) {
    const r = await fetch(url, {method: "POST", headers: {"content-type": "application/json", "accept": "application/json"},
                                body: JSON.stringify(body), credentials: "same-origin"});
    const data = await r.json().catch(() => ({error: r.statusText}));
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  },
  text(id, value) { const el = document.getElementById(id); if (el) el.textContent = value; },
  fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); },
  duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
    return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
  },
  followRun(id) {
    const active = new Set(["queued", "running", "stopping"]);
    const tick = async () => {
      let s;
      try { s = await (await fetch(`/api/runs/${id}`, {credentials: "same-origin"})).json(); } catch (e) { setTimeout(tick, 2000); return; }
      studio.text("status", s.status);
      document.getElementById("status").className = `badge status-${s.status}`;
      studio.text("message", s.message);
      studio.text("p-step", s.total ? `${s.step} / ${s.total}` : `${s.step}`);
      studio.text("p-loss", studio.fmt(s.loss, 4));
      studio.text("p-lr", s.lr === null ? "–" : Number(s.lr).toExponential(2));
      studio.text("p-speed", studio.fmt(s.s_per_step, 2));
      studio.text("p-eta", s.status === "running" ? studio.duration(s.eta_s) : "–");
      studio.text("p-val", studio.fmt(s.validation_loss, 5));
      const bar = document.getElementById("p-bar"); bar.max = s.total || 1; bar.value = s.step;
      document.getElementById("chart").innerHTML = s.chart;
      const gallery = document.getElementById("gallery");
      if (s.samples.length && gallery.dataset.count !== String(s.samples.length)) {
        gallery.dataset.count = String(s.samples.length);
        gallery.innerHTML = s.samples.map(entry => entry.images.map(image => {
          const url = `/runs/${id}/files/${image}`;
          return `<figure><a href="${url}"><img src="${url}?v=${s.step}" alt="samples at step ${entry.step}"></a>` +
                 `<figcaption>step ${entry.step}${entry.step === 0 ? " (baseline: the base model)" : ""}</figcaption></figure>`;
        }).join("")).join("");
      }
      document.getElementById("files").innerHTML = s.files.length ? s.files.map(([name, size]) =>
        `<li><a href="/runs/${id}/files/${name}" download>${name}</a> (${size} bytes)</li>`).join("") :
        '<li class="hint">nothing written yet</li>';
      const log = document.getElementById("log"); const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = s.log; if (atEnd) log.scrollTop = log.scrollHeight;
      document.getElementById("stop-form").hidden = !(s.status === "running" || s.status === "queued");
      document.getElementById("resume-form").hidden = !["stopped", "failed", "cancelled", "interrupted"].includes(s.status);
      document.body.dataset.runStatus = s.status;
      setTimeout(tick, active.has(s.status) ? 1000 : 5000);
    };
    tick();
  },
  refreshWhileActive() {
    const busy = document.querySelector(".status-running, .status-queued, .status-stopping");
    if (busy) setTimeout(() => location.reload(), 3000);
  },
  captionEditor(extension) {
    document.querySelectorAll(".save-caption").forEach(button => {
      button.addEventListener("click", async () => {
        const box = button.closest(".image"), note = box.querySelector(".saved");
        note.textContent = "saving…";
        try {
          const r = await studio.post("/api/captions", {path: box.dataset.path, text: box.querySelector(".caption").value, extension});
          box.querySelector(".caption").value = r.text; note.textContent = "saved"; note.className = "saved ok";
        } catch (e) { note.textContent = e.message; note.className = "saved error"; }
      });
    });
  },
  collapsibleFieldsets() {
    document.querySelectorAll("fieldset > legend").forEach(legend => {
      legend.addEventListener("click", () => legend.parentElement.classList.toggle("collapsed"));
    });
    document.querySelectorAll(".field.invalid").forEach(f => f.closest("fieldset").classList.remove("collapsed"));
  },
};
