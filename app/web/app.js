// The page of xai-service: every request goes through the public HTTP API (and its API key, when keys are on).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const state = { models: [], methods: [], scores: [], detail: null, files: [] };
const DEFAULT_SCORES = new Set(["sparseness", "complexity"]); // free: computed from the map

// ---- the API -------------------------------------------------------------------------------------------

function headers(extra = {}) {
  const key = $("#key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      const { error } = await response.json();
      message = error.message + (error.field ? ` (${error.field})` : "");
    } catch (ignored) { /* not our error body */ }
    throw new Error(message);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showError(error) {
  $("#error").textContent = error ? String(error.message || error) : "";
}

// ---- images --------------------------------------------------------------------------------------------

function addFiles(list) {
  for (const file of list) if (file.type.startsWith("image/")) state.files.push(file);
  drawThumbs();
}

function drawThumbs() {
  const thumbs = $("#thumbs");
  thumbs.replaceChildren();
  state.files.forEach((file, index) => {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = URL.createObjectURL(file);
    image.alt = file.name;
    image.title = "click to remove";
    image.addEventListener("click", () => { state.files.splice(index, 1); drawThumbs(); });
    const caption = document.createElement("figcaption");
    caption.textContent = file.name;
    figure.append(image, caption);
    thumbs.append(figure);
  });
}

// ---- models and methods --------------------------------------------------------------------------------

async function loadCatalogue() {
  [state.models, state.methods, state.scores] = await Promise.all([json("/models"), json("/methods"), json("/quality")]);
  drawScores();
  const select = $("#model");
  select.replaceChildren();
  for (const model of state.models) {
    const option = new Option(model.available ? model.name : `${model.name} (unavailable)`, model.name);
    option.disabled = !model.available;
    option.title = model.error || model.description || "";
    select.append(option);
  }
  const first = state.models.find((model) => model.available);
  if (first) select.value = first.name;
  await loadModel();
}

async function loadModel() {
  const name = $("#model").value;
  if (!name) return;
  const detail = (state.detail = await json(`/models/${encodeURIComponent(name)}`));
  $("#model-info").textContent = `${detail.num_classes} classes, input ${detail.input_size.join("x")}` +
    (detail.has_ood_head ? ", OoD head" : "") +
    (detail.forward_ms ? `; a forward pass takes ${detail.forward_ms} ms here (see each method's cost)` : "");
  const classes = $("#classes");
  classes.replaceChildren(...detail.labels.map((label, id) => new Option(`${id}: ${label}`, id)));
  drawMethods();
}

function typeOf(schema) {
  if (schema.enum) return "enum";
  if (schema.type) return schema.type;
  const kinds = (schema.anyOf || []).map((item) => item.type).filter((kind) => kind && kind !== "null");
  return kinds[0] || "json";
}

function paramInput(method, name, schema, value) {
  const label = document.createElement("label");
  label.textContent = `${name} `;
  label.title = schema.description || "";
  let input;
  const kind = typeOf(schema);
  if (name === "layer" && state.detail?.layers?.[method]) {
    input = document.createElement("select");
    input.append(new Option(`default (${state.detail.default_layer})`, ""));
    for (const layer of state.detail.layers[method]) input.append(new Option(layer, layer));
  } else if (kind === "enum") {
    input = document.createElement("select");
    for (const choice of schema.enum) input.append(new Option(choice, choice));
    input.value = value;
  } else if (kind === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(value);
  } else if (kind === "integer" || kind === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = kind === "integer" ? "1" : "any";
    for (const bound of ["minimum", "maximum"]) if (bound in schema) input[bound.slice(0, 3)] = schema[bound];
    input.value = value ?? "";
  } else {
    input = document.createElement("input");
    input.placeholder = value === null || value === undefined ? "default" : JSON.stringify(value);
  }
  input.dataset.name = name;
  input.dataset.kind = name === "layer" ? "string" : kind;
  input.dataset.default = JSON.stringify(value ?? null);
  label.append(input);
  return label;
}

function drawMethods() {
  const fieldset = $("#methods");
  fieldset.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Methods" }));
  const runs = state.detail?.methods;
  for (const method of state.methods) {
    const row = document.createElement("div");
    row.className = "method";
    const available = !runs || runs.includes(method.name);
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: method.name });
    box.disabled = !available;
    const title = document.createElement("label");
    title.append(box, ` ${method.title}`);
    title.title = available
      ? `${method.description}\nCost: ${method.cost}`
      : state.detail.unavailable_methods[method.name];
    const params = document.createElement("span");
    params.className = "params";
    params.hidden = true;
    const properties = method.parameters.properties || {};
    for (const [name, schema] of Object.entries(properties)) {
      params.append(paramInput(method.name, name, schema, method.defaults[name]));
    }
    box.addEventListener("change", () => { params.hidden = !box.checked; });
    if (!available) row.classList.add("off");
    row.append(title, params);
    fieldset.append(row);
  }
}

function drawScores() {
  const holder = $("#quality-scores");
  holder.replaceChildren();
  for (const score of state.scores.filter((item) => item.per_map)) {
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: score.name });
    box.checked = DEFAULT_SCORES.has(score.name);
    const label = document.createElement("label");
    label.title = `${score.description}\n${score.better} is better. Cost: ${score.cost}`;
    label.append(box, ` ${score.title} ${score.better === "higher" ? "↑" : "↓"}`);
    holder.append(label);
  }
}

function chosenScores() {
  return [...document.querySelectorAll("#quality-scores input:checked")].map((box) => box.value);
}

function scoreLine(quality) {
  const known = new Map(state.scores.map((score) => [score.name, score]));
  return Object.entries(quality || {}).filter(([, value]) => typeof value === "number").map(([name, value]) => {
    const score = known.get(name);
    const span = document.createElement("span");
    span.className = "score";
    span.dataset.score = name;
    span.textContent = `${score ? score.title : name} ${value.toFixed(3)}${score ? (score.better === "higher" ? " ↑" : " ↓") : ""}`;
    span.title = score ? `${score.description}\n${score.better} is better` : name;
    return span;
  });
}

function readParam(input) {
  const fallback = JSON.parse(input.dataset.default);
  switch (input.dataset.kind) {
    case "boolean": return input.checked;
    case "integer": case "number": return input.value === "" ? fallback : Number(input.value);
    case "enum": case "string": return input.value === "" ? fallback : input.value;
    default: return input.value.trim() === "" ? fallback : JSON.parse(input.value);
  }
}

function chosenMethods() {
  return [...document.querySelectorAll("#methods .method")]
    .filter((row) => $("input[type=checkbox]", row).checked)
    .map((row) => {
      const params = {};
      for (const input of row.querySelectorAll(".params [data-name]")) {
        const value = readParam(input);
        if (JSON.stringify(value) !== input.dataset.default) params[input.dataset.name] = value;
      }
      return { name: $("input[type=checkbox]", row).value, params };
    });
}

// ---- a job ---------------------------------------------------------------------------------------------

async function submit() {
  showError();
  const methods = chosenMethods();
  if (!state.files.length) throw new Error("add at least one image");
  if (!methods.length) throw new Error("choose at least one method");
  const byClass = document.querySelector("input[name=targets]:checked").value === "classes";
  const classes = [...$("#classes").selectedOptions].map((option) => Number(option.value));
  if (byClass && !classes.length) throw new Error("pick the classes to explain");
  const options = {
    model: $("#model").value,
    methods,
    targets: byClass ? state.files.map(() => classes) : { top_k: Number($("#top-k").value) },
    outputs: ["raw", "heatmap", "overlay"],
    quality: chosenScores(),
  };
  const steps = $("#quality-steps").value;
  if (steps !== "") options.quality_options = { steps: Number(steps) };
  const form = new FormData();
  for (const file of state.files) form.append("images", file, file.name);
  form.append("options", JSON.stringify(options));
  const job = await json("/explain", { method: "POST", body: form });
  track(job, [...state.files], state.detail);
}

async function track(job, files, detail) {
  const card = $("#job-template").content.firstElementChild.cloneNode(true);
  card.dataset.job = job.job_id;
  $(".title", card).textContent = `${job.model}: ${job.methods.join(", ")} on ${files.length} image(s)`;
  $("#jobs").prepend(card);
  const cancel = $(".cancel", card);
  cancel.addEventListener("click", () => api(`/jobs/${job.job_id}`, { method: "DELETE" }).catch(showError));
  let view = job;
  while (!TERMINAL.has(view.state)) {
    $("progress", card).value = view.progress;
    $(".state", card).textContent = view.state;
    await sleep(250);
    view = await json(`/jobs/${job.job_id}`);
  }
  $("progress", card).value = view.state === "succeeded" ? 1 : view.progress;
  const stateText = $(".state", card);
  stateText.textContent = view.state + (view.error ? `: ${view.error.message}` : "");
  stateText.classList.add(view.state);
  cancel.disabled = true;
  if (view.state === "succeeded") showResult(card, view, files, detail);
}

function showResult(card, view, files, detail) {
  const results = $(".results", card);
  const methods = view.methods;
  const cells = [];
  for (const image of view.result.images) {
    const block = document.createElement("div");
    block.className = "image-result";
    const heading = document.createElement("h3");
    heading.textContent = `image ${image.index + 1}: ${files[image.index]?.name ?? ""}`;
    const predictions = document.createElement("p");
    predictions.className = "predictions";
    predictions.innerHTML = image.predictions.map((p, rank) =>
      `<span class="${rank === 0 ? "top" : ""}">${escape(p.label)} ${(100 * p.probability).toFixed(1)}%</span>`,
    ).join(" · ") + (image.ood_score === null ? "" : ` · OoD score ${image.ood_score.toFixed(3)}`);
    const table = document.createElement("table");
    table.className = "grid";
    const head = table.createTHead().insertRow();
    head.append(document.createElement("th"));
    for (const method of methods) head.append(Object.assign(document.createElement("th"), { textContent: method }));
    const targets = [...new Set(image.maps.map((entry) => entry.target))];
    const body = table.createTBody();
    for (const target of targets) {
      const row = body.insertRow();
      const label = image.maps.find((entry) => entry.target === target).label;
      row.append(Object.assign(document.createElement("th"), { textContent: label }));
      for (const method of methods) {
        const entry = image.maps.find((item) => item.method === method && item.target === target);
        const img = document.createElement("img");
        img.alt = `${method} map of ${label}`;
        img.dataset.method = method;
        img.addEventListener("click", () => enlarge(img, entry));
        const scores = document.createElement("div");
        scores.className = "scores";
        scores.append(...scoreLine(entry.quality));
        row.insertCell().append(img, scores);
        cells.push({ img, entry, values: rawValues(entry.raw) });
      }
    }
    block.append(heading, predictions, table);
    results.append(block);
  }
  const controls = $(".controls", card);
  controls.hidden = false;
  for (const control of controls.querySelectorAll("select, input")) {
    control.addEventListener("change", () => draw(card, cells).catch(showError));
  }
  draw(card, cells).catch(showError);
}

function escape(text) {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

// ---- maps ----------------------------------------------------------------------------------------------

function half(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function rawValues(raw) {
  const bytes = Uint8Array.from(atob(raw.data), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const values = new Float32Array(bytes.length / 2);
  for (let i = 0; i < values.length; i++) values[i] = half(view.getUint16(2 * i, true));
  return { shape: raw.shape, values };
}

function sharedScale(cells, polarity) {
  const pick = { absolute: Math.abs, positive: (v) => Math.max(v, 0), negative: (v) => Math.max(-v, 0), both: (v) => v };
  const all = [];
  for (const { values } of cells) for (let i = 0; i < values.values.length; i += 7) all.push(pick[polarity](values.values[i]));
  all.sort((a, b) => a - b);
  const at = (q) => all[Math.min(all.length - 1, Math.floor(q * all.length))];
  if (polarity === "both") {
    const top = Math.max(Math.abs(at(0.005)), Math.abs(at(0.995)));
    return [-top, top || 1];
  }
  const low = at(0.005);
  const high = at(0.995);
  return [low, high > low ? high : low + 1];
}

async function draw(card, cells) {
  const query = new URLSearchParams({
    form: $(".form", card).value,
    alpha: $(".alpha", card).value,
    colormap: $(".colormap", card).value,
    polarity: $(".polarity", card).value,
    colorbar: $(".colorbar", card).checked,
  });
  if ($(".scale", card).value === "shared") {
    const [low, high] = sharedScale(cells, query.get("polarity"));
    query.set("scale_low", low);
    query.set("scale_high", high);
  }
  await Promise.all(cells.map(async ({ img, entry }) => {
    const blob = await (await api(`${entry.heatmap_url}?${query}`)).blob();
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.dataset.drawn = query.toString();
  }));
}

function enlarge(img, entry) {
  $("#large-image").src = img.src;
  $("#large-image").alt = img.alt;
  Object.assign($("#download-png"), { href: img.src, download: `${entry.method}_${entry.target}.png` });
  const { shape, values } = rawValues(entry.raw);
  const raw = new Blob([JSON.stringify({ method: entry.method, target: entry.target, shape, values: [...values] })],
    { type: "application/json" });
  Object.assign($("#download-raw"), { href: URL.createObjectURL(raw), download: `${entry.method}_${entry.target}.json` });
  $("#large").showModal();
}

// ---- wiring --------------------------------------------------------------------------------------------

function start() {
  const key = $("#key");
  key.value = localStorage.getItem("xai-key") || "";
  key.addEventListener("change", () => {
    localStorage.setItem("xai-key", key.value.trim());
    loadCatalogue().then(() => showError(), showError);
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  $("#files").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
  $("#model").addEventListener("change", () => loadModel().catch(showError));
  $("#submit").addEventListener("click", () => submit().catch(showError));
  $("#close-large").addEventListener("click", () => $("#large").close());
  loadCatalogue().catch(showError);
}

start();
