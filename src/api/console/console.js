// The vae-serve console: plain browser JavaScript over the public HTTP API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "vae-serve-api-key";
const ACTIVE_STATES = new Set(["queued", "running"]);

const state = {
  model: null,         // { name, version, manifest }
  sampleLabel: null,   // index, or null for unconditioned samples
  watched: null,       // { id, epochs, history, controller }
  jobsTimer: null,
  drawing: { busy: false, dirty: false },
};

// ---------- API access: one place adds the key and turns problems into readable messages ----------

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(`Cannot reach the server (${error.message}).`);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch { /* not JSON: keep the status text */ }
    const hint = response.status === 401 ? " Paste the server's API key at the top." : "";
    throw new ApiError(`${detail} (HTTP ${response.status}).${hint}`);
  }
  return response;
}

const getJson = async (path, options) => (await api(path, options)).json();

function showError(error) {
  if (error && error.name === "AbortError") return;
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

/// Wraps an event handler so that any failure becomes a visible message, never a silent stop.
function guarded(handler) {
  return async (...args) => {
    try {
      await handler(...args);
    } catch (error) {
      showError(error);
    }
  };
}

function setBlobImage(img, blob) {
  if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
  const url = URL.createObjectURL(blob);
  img.dataset.objectUrl = url;
  return loadImage(img, url);
}

function loadImage(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => { img.hidden = false; resolve(); };
    img.onerror = () => reject(new ApiError("The server sent an image the browser cannot show."));
    img.src = src;
  });
}

/// An element with attributes (`text` sets its text) and children; `svg` makes SVG elements.
function el(tag, attributes = {}, ...children) {
  return fill(document.createElement(tag), attributes, children);
}

function svg(tag, attributes = {}, ...children) {
  return fill(document.createElementNS("http://www.w3.org/2000/svg", tag), attributes, children);
}

function fill(node, attributes, children) {
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function modelBase() {
  const { name, version } = state.model;
  return `/v1/models/${encodeURIComponent(name)}/versions/${version}`;
}

const labelNames = () => state.model?.manifest.config.label_names ?? [];
const SEMI_SUPERVISED = ["semi-supervised", "semi-supervised-conv"];
const hasClassifier = () => SEMI_SUPERVISED.includes(state.model?.manifest.config.architecture);
const format = (x, digits = 2) => (x == null ? "–" : Number(x).toFixed(digits));
const percent = (fraction) => (fraction == null ? "–" : `${(100 * fraction).toFixed(1)}%`);

// ---------- Models ----------

async function loadModels() {
  const models = await getJson("/v1/models");
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  for (const entry of models) {
    const latest = Math.max(...entry.versions.map((v) => v.version));
    for (const version of [...entry.versions].sort((a, b) => b.version - a.version)) {
      const isDefault = entry.default && version.version === latest;
      const what = version.broken ? "broken" : version.architecture;
      const label = `${entry.name} v${version.version} · ${what}${isDefault ? " (default)" : ""}`;
      const option = el("option", { value: `${entry.name}@${version.version}`, text: label });
      if (version.broken) {
        option.disabled = true;
        option.title = version.broken;
      }
      if (isDefault) option.dataset.default = "true";
      select.append(option);
    }
  }
  if (!select.options.length) {
    select.append(el("option", { value: "", text: "no models yet: train one below" }));
    return;
  }
  const keep = [...select.options].find((o) => o.value === previous);
  const fallback = [...select.options].find((o) => o.dataset.default && !o.disabled) || [...select.options].find((o) => !o.disabled);
  if (!fallback) return;
  select.value = (keep || fallback).value;
  if (!keep) await selectModel();
}

async function selectModel() {
  const [name, version] = $("model").value.split("@");
  if (!name) return;
  const manifest = await getJson(`/v1/models/${encodeURIComponent(name)}/versions/${version}`);
  state.model = { name, version: Number(version), manifest };
  state.sampleLabel = null;
  renderDetails(manifest);
  renderLabelControls();
  clearAnalysis();
  await sample();
}

function renderDetails(manifest) {
  const { config, metrics } = manifest;
  const rows = [
    ["Name", `${manifest.name} v${state.model.version}`],
    ["Architecture", config.architecture],
    ["Dataset", manifest.dataset],
    ["Image", `${config.image.channels}×${config.image.height}×${config.image.width}`],
    ["Latent size", config.latent_dim],
    ["Classes", config.label_names.length ? config.label_names.join(", ") : "–"],
    ["Created", new Date(manifest.created_at).toLocaleString()],
  ];
  const fidelity = labelFidelity(metrics);
  for (const [key, value] of Object.entries(metrics)) {
    if (key.startsWith("label_fidelity")) continue;
    const shown = key.includes("accuracy") ? percent(value) : format(value);
    rows.push([key.replaceAll("_", " "), shown]);
  }
  if (metrics.label_fidelity != null) {
    // Next to accuracy: how often a sample drawn for a class is judged that class.
    const [worstName, worst] = Object.entries(fidelity).reduce((a, b) => (b[1] < a[1] ? b : a), ["", Infinity]);
    const worstText = worstName ? ` (worst: ${worstName}, ${percent(worst)})` : "";
    rows.push(["label fidelity", `${percent(metrics.label_fidelity)}${worstText}`]);
  }
  $("model-details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

/// Per class name, the fraction of its samples the dataset's judge called that class (from the manifest).
function labelFidelity(metrics) {
  const prefix = "label_fidelity.";
  return Object.fromEntries(Object.entries(metrics).filter(([key]) => key.startsWith(prefix)).map(([key, value]) => [key.slice(prefix.length), value]));
}

function renderLabelControls() {
  const names = hasClassifier() ? labelNames() : [];
  const fidelity = labelFidelity(state.model.manifest.metrics);
  const buttons = names.map((name, index) => {
    const button = el("button", { type: "button", "data-label": String(index), "aria-pressed": "false", text: name });
    if (fidelity[name] != null) button.title = `${percent(fidelity[name])} of its samples are judged ${name}`;
    button.addEventListener("click", guarded(async () => {
      state.sampleLabel = index;
      await sample();
    }));
    return button;
  });
  const any = el("button", { type: "button", class: "secondary", "aria-pressed": "true", text: names.length ? "any class" : "Sample" });
  any.addEventListener("click", guarded(async () => {
    state.sampleLabel = null;
    await sample();
  }));
  $("labels").replaceChildren(any, ...buttons);
  $("sample-hint").textContent = names.length ? "Pick a class to draw samples of it." : "This model has no classes: samples come from the prior.";

  for (const id of ["interp-from", "interp-to"]) {
    $(id).replaceChildren(...names.map((name, index) => el("option", { value: String(index), text: name })));
  }
  if (names.length > 1) $("interp-to").value = String(names.length - 1);
  for (const control of $("interpolate-labels").elements) control.disabled = names.length < 2;
}

// ---------- Sample and interpolate ----------

async function sample() {
  if (!state.model) return;
  const params = new URLSearchParams({ n: $("sample-count").value, temperature: $("temperature").value, seed: $("seed").value || "0" });
  if (state.sampleLabel != null) params.set("label", String(state.sampleLabel));
  for (const button of $("labels").querySelectorAll("button")) {
    const label = button.dataset.label == null ? null : Number(button.dataset.label);
    button.setAttribute("aria-pressed", String(label === state.sampleLabel));
  }
  const img = $("sample-grid");
  const blob = await (await api(`${modelBase()}/sample?${params}`)).blob();
  await setBlobImage(img, blob);
  const what = state.sampleLabel == null ? "any class" : `class ${labelNames()[state.sampleLabel]}`;
  img.dataset.label = state.sampleLabel == null ? "" : String(state.sampleLabel);
  img.alt = `${params.get("n")} samples of ${what}`;
  $("sample-caption").textContent = `${what} · seed ${params.get("seed")} · temperature ${params.get("temperature")}`;
}

async function interpolateLabels(event) {
  event.preventDefault();
  const params = new URLSearchParams({ from: $("interp-from").value, to: $("interp-to").value, steps: $("interp-steps").value, seed: $("seed").value || "0" });
  await setBlobImage($("interp-strip"), await (await api(`${modelBase()}/interpolate?${params}`)).blob());
}

async function interpolateImages(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("image", $("interp-first").files[0]);
  form.append("image", $("interp-second").files[0]);
  const params = new URLSearchParams({ steps: $("interp-steps").value });
  await setBlobImage($("interp-strip"), await (await api(`${modelBase()}/interpolate?${params}`, { method: "POST", body: form })).blob());
}

// ---------- Draw, drop and analyse ----------

function setUpPad() {
  const pad = $("pad");
  const context = pad.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, pad.width, pad.height);
  };
  clear();
  let last = null;
  const point = (event) => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
  };
  pad.addEventListener("pointerdown", (event) => {
    pad.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
  });
  pad.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
    analyseDrawing();
  });
  const end = () => {
    if (last) analyseDrawing();
    last = null;
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Backspace") {
      clear();
      clearAnalysis();
    }
  });
  $("clear-pad").addEventListener("click", () => {
    clear();
    clearAnalysis();
  });

  function stroke([x0, y0], [x1, y1]) {
    context.strokeStyle = "#fff";
    context.lineWidth = 20;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(x0, y0);
    context.lineTo(x1, y1);
    context.stroke();
  }
}

/// The drawing as MNIST prepares digits: the ink's bounding box scaled into 20×20 and centred
/// in 28×28. Returns null for an empty pad.
function drawingAsDigit() {
  const pad = $("pad");
  const { data, width, height } = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height);
  let [left, top, right, bottom] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[(y * width + x) * 4] > 32) {
        left = Math.min(left, x); right = Math.max(right, x);
        top = Math.min(top, y); bottom = Math.max(bottom, y);
      }
    }
  }
  if (right < 0) return null;
  const [w, h] = [right - left + 1, bottom - top + 1];
  const scale = 20 / Math.max(w, h);
  const digit = document.createElement("canvas");
  digit.width = digit.height = 28;
  const context = digit.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, 28, 28);
  context.imageSmoothingQuality = "high";
  context.drawImage(pad, left, top, w, h, 14 - (w * scale) / 2, 14 - (h * scale) / 2, w * scale, h * scale);
  return new Promise((resolve) => digit.toBlob(resolve, "image/png"));
}

/// Analyses the drawing while it is drawn: one request at a time, the latest stroke always last.
async function analyseDrawing() {
  const drawing = state.drawing;
  if (drawing.busy) {
    drawing.dirty = true;
    return;
  }
  drawing.busy = true;
  try {
    do {
      drawing.dirty = false;
      const blob = await drawingAsDigit();
      if (blob) await analyse(blob);
    } while (drawing.dirty);
  } catch (error) {
    showError(error);
  } finally {
    drawing.busy = false;
  }
}

async function analyse(imageBlob) {
  if (!state.model) throw new ApiError("Choose a model first.");
  const send = (endpoint) => {
    const form = new FormData();
    form.append("image", imageBlob, "input.png");
    return getJson(`${modelBase()}/${endpoint}`, { method: "POST", body: form });
  };
  const [reconstructed, classified] = await Promise.all([send("reconstruct"), hasClassifier() ? send("classify") : null]);
  await setBlobImage($("input-preview"), imageBlob);
  const result = reconstructed.results[0];
  await loadImage($("reconstruction"), `data:image/png;base64,${result.reconstruction}`);
  $("reconstruction-score").textContent = `ELBO ${format(result.elbo)} nats (reconstruction ${format(result.reconstruction_error)}, KL ${format(result.kl)})`;
  if (classified) renderProbabilities(classified.results[0]);
  else $("prediction").textContent = "This model has no classifier.";
}

function renderProbabilities(classification) {
  const prediction = $("prediction");
  prediction.textContent = `Looks like ${classification.name} (${percent(classification.probability)})`;
  prediction.dataset.label = String(classification.label);
  const rows = labelNames().map((name, index) => {
    const p = classification.probabilities[name] ?? 0;
    const fill = el("div", { class: "fill", style: `width: ${(100 * p).toFixed(1)}%` });
    const row = el("li", { "data-label": String(index) },
      el("span", { class: "name", text: name }),
      el("div", { class: "track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": p.toFixed(3), "aria-label": `probability of ${name}` }, fill),
      el("span", { class: "value", text: percent(p) }));
    if (index === classification.label) row.classList.add("top");
    return row;
  });
  $("probabilities").replaceChildren(...rows);
}

function clearAnalysis() {
  for (const id of ["input-preview", "reconstruction"]) $(id).hidden = true;
  $("reconstruction-score").textContent = "";
  $("prediction").textContent = "";
  delete $("prediction").dataset.label;
  $("probabilities").replaceChildren();
}

function setUpDrop() {
  const zone = document.querySelector(".draw-area");
  const hint = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    hint.classList.add("over");
  });
  zone.addEventListener("dragleave", () => hint.classList.remove("over"));
  zone.addEventListener("drop", guarded(async (event) => {
    event.preventDefault();
    hint.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) await analyse(file);
  }));
  $("upload").addEventListener("change", guarded(async (event) => {
    const file = event.target.files[0];
    if (file) await analyse(file);
  }));
}

// ---------- Training ----------

async function loadDatasets() {
  const datasets = await getJson("/v1/datasets");
  $("datasets").replaceChildren(...datasets.map((d) => el("option", { value: d.name, text: `${d.name} (${d.format})` })));
}

const OPTIMIZER_NAMES = { adam: "Adam", rmsprop: "RMSprop + Nesterov", sgd: "SGD + Nesterov" };

// The chosen architecture's recipe as placeholders: what an empty field trains with.
async function showRecipe() {
  const architecture = $("train-architecture").value;
  $("train-labeled").disabled = !SEMI_SUPERVISED.includes(architecture);
  const recipe = await getJson(`/v1/train/defaults?architecture=${encodeURIComponent(architecture)}`);
  $("train-labeled").placeholder = String(recipe.labeled);
  $("train-epochs").placeholder = String(recipe.epochs);
  $("train-lr").placeholder = String(recipe.optimizer.learning_rate);
  $("train-optimizer-recipe").textContent = `recipe (${OPTIMIZER_NAMES[recipe.optimizer.kind] ?? recipe.optimizer.kind})`;
}

async function submitTraining(event) {
  event.preventDefault();
  const architecture = $("train-architecture").value;
  // Only what the user set: the server fills in the rest from the same recipe as everywhere else.
  const options = { model: { architecture } };
  const optimizer = {};
  if ($("train-optimizer").value) optimizer.kind = $("train-optimizer").value;
  if ($("train-lr").value) optimizer.learning_rate = Number($("train-lr").value);
  if (Object.keys(optimizer).length) options.optimizer = optimizer;
  if ($("train-epochs").value) options.epochs = Number($("train-epochs").value);
  if (SEMI_SUPERVISED.includes(architecture) && $("train-labeled").value) options.labeled = Number($("train-labeled").value);
  const data = {};
  if ($("train-max").value) data.max_train = Number($("train-max").value);
  const request = { name: $("train-name").value.trim(), dataset: $("train-dataset").value.trim(), options, data };
  const submitted = await getJson("/v1/train", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) });
  await refreshJobs();
  watch(submitted.job.id);
}

async function refreshJobs() {
  const jobs = await getJson("/v1/jobs?limit=20");
  const rows = jobs.map((job) => {
    const request = job.request || {};
    const progress = job.progress ? `epoch ${job.progress.epoch}/${job.progress.epochs}` : job.model_version ? `v${job.model_version}` : "–";
    const actions = el("td");
    const watchButton = el("button", { type: "button", class: "secondary", text: "Watch", "aria-label": `Watch job ${job.id}` });
    watchButton.addEventListener("click", () => watch(job.id));
    actions.append(watchButton);
    if (ACTIVE_STATES.has(job.state)) {
      const cancel = el("button", { type: "button", class: "secondary", text: "Cancel", "aria-label": `Cancel job ${job.id}` });
      cancel.addEventListener("click", guarded(async () => {
        await api(`/v1/jobs/${job.id}`, { method: "DELETE" });
        await refreshJobs();
      }));
      actions.append(" ", cancel);
    }
    const row = el("tr", { "data-job": String(job.id), "data-state": job.state },
      el("td", { text: `#${job.id}` }),
      el("td", { text: request.name ?? "?" }),
      el("td", { class: `state-${job.state}`, text: job.state, title: job.error ?? "" }),
      el("td", { text: progress }),
      actions);
    if (state.watched?.id === job.id) row.classList.add("watched");
    return row;
  });
  $("jobs").tBodies[0].replaceChildren(...rows);
  clearTimeout(state.jobsTimer);
  if (jobs.some((job) => ACTIVE_STATES.has(job.state))) state.jobsTimer = setTimeout(guarded(refreshJobs), 3000);
}

/// Follows a job's Server-Sent Events. fetch (not EventSource) so that the API key can be sent.
async function watch(id) {
  state.watched?.controller.abort();
  const watched = { id, epochs: 1, history: [], controller: new AbortController() };
  state.watched = watched;
  for (const row of $("jobs").tBodies[0].rows) row.classList.toggle("watched", row.dataset.job === String(id));
  $("chart-title").textContent = `Training curves: job #${id}`;
  renderChart(watched);
  try {
    const response = await api(`/v1/jobs/${id}/events`, { signal: watched.controller.signal, headers: { Accept: "text/event-stream" } });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = parseServerSentEvent(block);
        if (event) await onJobEvent(watched, event);
      }
    }
  } catch (error) {
    showError(error);
  }
}

function parseServerSentEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const [field, ...rest] = line.split(":");
    const value = rest.join(":").replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: JSON.parse(data.join("\n")) } : null;
}

async function onJobEvent(watched, { name, data }) {
  if (state.watched !== watched) return;
  const progress = $("job-progress");
  switch (name) {
    case "snapshot":
      watched.epochs = data.progress?.epochs ?? data.request?.options?.epochs ?? 10;
      watched.history = data.history || [];
      progress.hidden = !ACTIVE_STATES.has(data.state);
      progress.value = watched.history.length / watched.epochs;
      break;
    case "step":
      progress.hidden = false;
      progress.value = (data.epoch - 1 + data.step / data.steps) / watched.epochs;
      break;
    case "epoch":
      watched.history.push(data.metrics);
      progress.value = data.metrics.epoch / watched.epochs;
      await refreshJobs();
      break;
    case "finished":
      progress.hidden = true;
      await refreshJobs();
      if (data.state === "succeeded") await loadModels();
      else if (data.error) showError(new ApiError(`Job #${watched.id} ${data.state}: ${data.error}`));
      break;
  }
  renderChart(watched);
}

const SERIES = [
  { key: "loss", label: "training loss", color: "#2456c7", axis: "nats" },
  { key: "validation_negative_elbo", label: "validation −ELBO", color: "#d9480f", axis: "nats" },
  { key: "validation_accuracy", label: "validation accuracy", color: "#2b8a3e", axis: "fraction" },
];

/// Loss and −ELBO share the left axis (nats); accuracy has its own on the right (0–1).
function renderChart(watched) {
  const chart = $("chart");
  const history = watched.history;
  chart.dataset.epochs = String(history.length);
  const [width, height, margin] = [480, 240, { left: 46, right: 40, top: 12, bottom: 26 }];
  const x = (epoch) => margin.left + ((epoch - 1) / Math.max(1, Math.max(watched.epochs, history.length) - 1)) * (width - margin.left - margin.right);
  const nats = history.flatMap((m) => [m.loss, m.validation_negative_elbo]).filter((v) => v != null);
  const [low, high] = nats.length ? [Math.min(...nats), Math.max(...nats)] : [0, 1];
  const pad = (high - low) * 0.1 || 1;
  const yNats = (v) => margin.top + (1 - (v - (low - pad)) / (high - low + 2 * pad)) * (height - margin.top - margin.bottom);
  const yFraction = (v) => margin.top + (1 - v) * (height - margin.top - margin.bottom);
  const parts = [
    svg("line", { x1: margin.left, y1: height - margin.bottom, x2: width - margin.right, y2: height - margin.bottom, stroke: "#999" }),
    svg("line", { x1: margin.left, y1: margin.top, x2: margin.left, y2: height - margin.bottom, stroke: "#999" }),
    svg("text", { x: width / 2, y: height - 6, "text-anchor": "middle" }, "epoch"),
  ];
  if (nats.length) {
    parts.push(svg("text", { x: 4, y: yNats(high) + 4 }, high.toFixed(1)), svg("text", { x: 4, y: yNats(low) + 4 }, low.toFixed(1)));
  }
  const drawn = [];
  for (const series of SERIES) {
    const points = history.filter((m) => m[series.key] != null).map((m) => [x(m.epoch), (series.axis === "nats" ? yNats : yFraction)(m[series.key])]);
    if (!points.length) continue;
    drawn.push(series);
    if (series.axis === "fraction") parts.push(svg("text", { x: width - margin.right + 4, y: yFraction(1) + 4 }, "100%"), svg("text", { x: width - margin.right + 4, y: yFraction(0) + 4 }, "0%"));
    parts.push(svg("polyline", { points: points.map((p) => p.join(",")).join(" "), fill: "none", stroke: series.color, "stroke-width": 2 }));
    for (const [px, py] of points) parts.push(svg("circle", { cx: px, cy: py, r: 3, fill: series.color, class: `point ${series.key}` }));
  }
  if (!history.length) parts.push(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "waiting for the first epoch…"));
  chart.replaceChildren(...parts);
  $("chart-legend").replaceChildren(...drawn.map((s) => el("span", { style: `--swatch: ${s.color}`, text: s.label })));
  $("epochs").tBodies[0].replaceChildren(...history.map((m) => el("tr", {},
    el("td", { text: String(m.epoch) }),
    el("td", { text: format(m.loss) }),
    el("td", { text: format(m.validation_negative_elbo) }),
    el("td", { text: percent(m.validation_accuracy) }),
    el("td", { text: format(m.seconds, 1) }))));
}

// ---------- Start-up ----------

function setUpKey() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", guarded(async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    $("error").hidden = true;
    await start();
  }));
}

async function start() {
  await Promise.all([loadModels(), loadDatasets(), refreshJobs(), showRecipe()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("error-close").addEventListener("click", () => { $("error").hidden = true; });
  setUpKey();
  setUpPad();
  setUpDrop();
  $("model").addEventListener("change", guarded(selectModel));
  $("another-batch").addEventListener("click", guarded(async () => {
    $("seed").value = String(Number($("seed").value || 0) + 1);
    await sample();
  }));
  for (const id of ["sample-count", "seed"]) $(id).addEventListener("change", guarded(sample));
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(1); });
  $("temperature").addEventListener("change", guarded(sample));
  $("interpolate-labels").addEventListener("submit", guarded(interpolateLabels));
  $("interpolate-images").addEventListener("submit", guarded(interpolateImages));
  $("train-architecture").addEventListener("change", guarded(showRecipe));
  $("train-form").addEventListener("submit", guarded(submitTraining));
  guarded(start)();
});
