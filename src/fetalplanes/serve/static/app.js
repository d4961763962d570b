// fetalplanes clinician page: upload images, show the predicted plane, top-2 bars,
// confidence, the abstain warning, the "not a fetal plane" (out-of-distribution) state and an optional heat-map (CAM) overlay. No framework, no CDN.
"use strict";

(function () {
  const KEY_STORAGE = "fetalplanes-api-key";
  const PARALLEL = 2; // requests in flight at once: keeps the server responsive for others
  const BROWSER_IMAGE_TYPES = ["image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp"];

  const state = { model: null, queue: [], running: 0, cards: [] };
  const $ = (id) => document.getElementById(id);

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function headers() {
    const key = apiKey();
    return key ? { "X-API-Key": key } : {};
  }

  function percent(p) {
    return (100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0) + "%";
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status + " " + response.statusText;
  }

  // ------------------------------------------------------------------ model info and API key

  async function loadModel() {
    let response;
    try {
      response = await fetch("/v1/model", { headers: headers() });
    } catch (e) {
      $("model-line").textContent = "Cannot reach the server.";
      return;
    }
    if (response.status === 401) {
      $("apikey").hidden = false;
      $("model-line").textContent = "API key required.";
      if (apiKey()) showKeyError("That key was not accepted.");
      $("apikey-input").focus();
      return;
    }
    if (!response.ok) {
      $("model-line").textContent = "Model information unavailable: " + (await errorText(response));
      return;
    }
    state.model = await response.json();
    $("apikey").hidden = true;
    const m = state.model;
    const version = m.version ? " " + m.version : "";
    const calibrated = m.temperature !== 1 ? " · calibrated (T = " + m.temperature.toFixed(2) + ")" : "";
    const abstain = m.abstain_threshold > 0 ? " · abstains below " + percent(m.abstain_threshold) : "";
    const gate = m.ood_gate && m.ood_gate.threshold !== undefined
      ? " · rejects non-fetal-plane images (" + m.ood_gate.score + " gate)" : " · no out-of-distribution gate";
    $("model-line").textContent = "Model: " + m.name + version + " (" + m.kind + ")" + calibrated + abstain + gate;
    const mb = m.limits.max_upload_bytes / (1024 * 1024);
    $("limit-text").textContent = ", up to " + (mb >= 10 ? mb.toFixed(0) : mb.toFixed(1)) + " MB";
    drainQueue();
  }

  function showKeyError(text) {
    const el = $("apikey-error");
    el.textContent = text;
    el.hidden = !text;
  }

  function onKeySubmit(event) {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("apikey-input").value.trim());
    showKeyError("");
    loadModel();
  }

  // ------------------------------------------------------------------ cards

  function makeCard(file) {
    const node = $("card-template").content.firstElementChild.cloneNode(true);
    node.querySelector(".filename").textContent = file.name;
    const card = { file, node, objectUrl: null, overlay: null, original: null };
    if (BROWSER_IMAGE_TYPES.includes(file.type)) {
      card.objectUrl = URL.createObjectURL(file);
      card.original = card.objectUrl;
      showImage(card, card.original, "Uploaded image " + file.name);
    } else {
      node.querySelector(".card-image").alt = "Preview of " + file.name + " is loading";
    }
    node.querySelector(".overlay-toggle").addEventListener("change", (e) => onToggle(card, e.target));
    return card;
  }

  function showImage(card, src, alt) {
    const img = card.node.querySelector(".card-image");
    img.src = src;
    img.alt = alt;
  }

  function showError(card, text) {
    card.node.classList.add("is-error");
    card.node.querySelector(".pending").hidden = true;
    if (!card.original) {
      card.node.querySelector(".card-image").hidden = true;
      card.node.querySelector(".no-preview").hidden = false;
    }
    const el = card.node.querySelector(".card-error");
    el.textContent = text;
    el.hidden = false;
  }

  function renderBars(list, topk) {
    list.replaceChildren();
    topk.slice(0, 2).forEach((item) => {
      const row = document.createElement("li");
      row.className = "bar-row";
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = item.label;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = (100 * item.probability).toFixed(1) + "%"; // CSSOM: allowed by the CSP
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(item.probability);
      row.append(label, track, value);
      list.appendChild(row);
    });
  }

  function renderResult(card, result) {
    const node = card.node;
    node.querySelector(".pending").hidden = true;
    node.querySelector(".result").hidden = false;
    const rejected = result.state === "out_of_distribution";
    node.querySelector(".eyebrow").textContent = rejected ? "Not a fetal plane" : "Predicted plane";
    node.querySelector(".plane").textContent = rejected ? "Not a fetal plane" : result.plane;
    node.querySelector(".confidence").hidden = rejected;
    node.querySelector(".confidence-value").textContent = percent(result.confidence);
    const ood = node.querySelector(".ood-warning");
    ood.hidden = !rejected;
    node.classList.toggle("is-ood", rejected);
    if (rejected) {
      node.querySelector(".ood-text").textContent =
        "This image does not look like the fetal ultrasound planes the model was trained on (out-of-distribution score " +
        result.ood.score.toFixed(2) + " > threshold " + result.ood.threshold.toFixed(2) + "). No plane is given.";
    }
    const warning = node.querySelector(".abstain-warning");
    const abstained = result.state === "abstain";
    warning.hidden = !abstained;
    node.classList.toggle("is-abstain", abstained);
    if (abstained) {
      node.querySelector(".abstain-text").textContent =
        "Confidence " + percent(result.confidence) + " is below the model's threshold of " +
        percent(result.abstain_threshold) + ". Please classify this image yourself.";
    }
    node.querySelector(".bars-title").hidden = rejected;
    node.querySelector(".bars").hidden = rejected;
    if (!rejected) renderBars(node.querySelector(".bars"), result.topk);
    renderCine(node.querySelector(".cine-note"), result.cine);
    if (result.preview_png_base64) {
      card.original = "data:image/png;base64," + result.preview_png_base64;
      showImage(card, card.original, "Uploaded image " + card.file.name);
    }
    const toggle = node.querySelector(".overlay-toggle");
    if (state.model && !state.model.explain_available) {
      toggle.disabled = true;
      setNote(card, state.model.explain_detail || "Heat maps are not available for this model.");
    }
  }

  // A cine (multi-frame DICOM/TIFF): every frame was answered; say which frame is shown and
  // the best frame of each plane, so nobody mistakes the answer for the first frame's.
  function renderCine(note, cine) {
    note.hidden = !cine;
    if (!cine) return;
    const best = cine.best_per_plane.map(function (b) {
      return b.plane + " at frame " + b.frame + " (" + percent(b.confidence) + ")";
    }).join("; ");
    note.textContent = "Cine: " + cine.frames_answered + " of " + cine.frames_declared +
      " frames answered; shown: frame " + cine.answered_frame + " (the most confident). Best frame per plane: " +
      (best || "none (no frame got a plane)") + "." + (cine.skipped.length ? " " + cine.skipped.length + " frame(s) unreadable." : "") +
      (cine.note ? " " + cine.note + "." : "");
  }

  function setNote(card, text) {
    const note = card.node.querySelector(".overlay-note");
    note.textContent = text || "";
    note.hidden = !text;
  }

  // ------------------------------------------------------------------ requests

  async function postImage(file, params) {
    const form = new FormData();
    form.append("file", file, file.name);
    const query = new URLSearchParams(Object.assign({ top_k: "2" }, params));
    return fetch("/v1/predict?" + query.toString(), { method: "POST", body: form, headers: headers() });
  }

  async function analyse(card) {
    const limit = state.model ? state.model.limits.max_upload_bytes : Infinity;
    if (card.file.size > limit) {
      showError(card, card.file.name + ": file is larger than the server's limit of " +
        (limit / (1024 * 1024)).toFixed(1) + " MB.");
      return;
    }
    let response;
    try {
      response = await postImage(card.file, card.original ? {} : { preview: "true" });
    } catch (e) {
      showError(card, "Network error: the server could not be reached.");
      return;
    }
    if (!response.ok) {
      if (response.status === 401) loadModel();
      showError(card, await errorText(response));
      return;
    }
    renderResult(card, await response.json());
  }

  async function onToggle(card, toggle) {
    if (!toggle.checked) {
      showImage(card, card.original, "Uploaded image " + card.file.name);
      return;
    }
    if (!card.overlay) {
      toggle.disabled = true;
      setNote(card, "Computing heat map…");
      try {
        const response = await postImage(card.file, { explain: "true" });
        if (!response.ok) throw new Error(await errorText(response));
        const result = await response.json();
        const ex = result.explanation;
        if (!ex || !ex.available) throw new Error((ex && ex.detail) || "Heat map not available.");
        card.overlay = "data:image/png;base64," + ex.overlay_png_base64;
        card.method = ex.method || "class activation map";
        // a rejected image has no plane (plane is null): the map shows its nearest class, said as such
        setNote(card, "Heat map (" + card.method + "): regions that most supported " + (result.plane
          ? "“" + result.plane + "”." : "the nearest class “" + result.nearest_plane + "” (not a fetal plane)."));
      } catch (e) {
        toggle.checked = false;
        setNote(card, e.message);
        return;
      } finally {
        toggle.disabled = false;
      }
    }
    if (toggle.checked) showImage(card, card.overlay, "Heat map (" + card.method + ") over " + card.file.name);
  }

  function addFiles(files) {
    const list = Array.from(files);
    if (!list.length) return;
    for (const file of list) {
      const card = makeCard(file);
      state.cards.push(card);
      $("results").prepend(card.node);
      state.queue.push(card);
    }
    $("clear").hidden = false;
    drainQueue();
  }

  function drainQueue() {
    if (!state.model) {
      if (state.queue.length) setStatus("Waiting for the model information…");
      return;
    }
    while (state.running < PARALLEL && state.queue.length) {
      const card = state.queue.shift();
      state.running += 1;
      analyse(card).finally(() => {
        state.running -= 1;
        drainQueue();
      });
    }
    const pending = state.running + state.queue.length;
    setStatus(pending ? "Analysing " + pending + " image(s)…" : "Done.");
  }

  function clearResults() {
    for (const card of state.cards) {
      if (card.objectUrl) URL.revokeObjectURL(card.objectUrl);
    }
    state.cards = [];
    state.queue = [];
    $("results").replaceChildren();
    $("clear").hidden = true;
    setStatus("");
  }

  // ------------------------------------------------------------------ drag and drop

  function setupDropzone() {
    const zone = $("dropzone");
    const input = $("file-input");
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = ""; // picking the same file again still fires "change"
    });
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("dragover");
      })
    );
    ["dragleave", "drop"].forEach((type) =>
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.remove("dragover");
      })
    );
    zone.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
    // Dropping outside the zone must not make the browser navigate away to the file.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupDropzone();
    $("apikey-form").addEventListener("submit", onKeySubmit);
    $("clear").addEventListener("click", clearResults);
    loadModel();
  });
})();
