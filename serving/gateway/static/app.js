// pixelgate's try-it page: pick a model, draw or upload an image, show the gateway's answer.
// Plain browser JavaScript, no build step; it talks to the gateway's own JSON API only.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [],
  input: null,       // the last image sent (a Blob), sent again when the model or top-k changes
  inputKind: null,   // "draw" or "upload"
  sequence: 0,
  token: sessionStorage.getItem("pixelgate.token") || "",
};

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

// fetch + JSON; a gateway error becomes an Error carrying its {error, code} and the status.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { Accept: "application/json", ...authHeaders() } });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) {
    const error = new Error(body && body.error ? body.error : `HTTP ${response.status} ${response.statusText}`);
    error.code = body && body.code ? body.code : "http_error";
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

// ---- status and models ----------------------------------------------------------------------

async function refreshStatus() {
  let ready = false;
  let text = "gateway unreachable";
  try {
    const response = await fetch("/readyz", { headers: authHeaders() });
    const body = await response.json();
    ready = response.ok && body.ready === true;
    const models = Object.entries(body.models || {});
    const available = models.filter(([, s]) => s === "AVAILABLE").length;
    text = ready ? `ready · ${available} model${available === 1 ? "" : "s"}` : `not ready (${available}/${models.length} models)`;
  } catch (_) { /* keep "unreachable" */ }
  $("status").dataset.ready = String(ready);
  $("status-text").textContent = text;
}

async function loadModels() {
  const select = $("model-select");
  try {
    state.models = (await api("/v1/models")).models;
  } catch (error) {
    select.innerHTML = "<option>no models</option>";
    showError(error);
    return;
  }
  $("error").hidden = true;
  select.innerHTML = "";
  for (const model of state.models) {
    const option = document.createElement("option");
    option.value = model.name;
    const shape = model.input ? model.input.shape.slice(0, 2).join("×") : "";
    option.textContent = model.state === "AVAILABLE" ? `${model.name}  (v${model.version}, ${shape})` : `${model.name}  (unavailable)`;
    option.disabled = model.state !== "AVAILABLE";
    select.append(option);
  }
  const remembered = localStorage.getItem("pixelgate.model");
  const usable = state.models.filter((m) => m.state === "AVAILABLE").map((m) => m.name);
  // Drawing is the quickest way in: start on a 28×28 model, digits first, unless one was chosen before.
  const drawable = state.models.filter((m) => m.state === "AVAILABLE" && canDraw(m));
  drawable.sort((a, b) => Number(isDigits(b)) - Number(isDigits(a)));
  select.value = usable.includes(remembered) ? remembered : ((drawable[0] || {}).name || usable[0] || "");
  select.disabled = usable.length === 0;
  onModelChange(false);
}

function currentModel() {
  return state.models.find((m) => m.name === $("model-select").value) || null;
}

function canDraw(model) {
  return Boolean(model && model.input && model.input.shape[0] === 28 && model.input.shape[1] === 28);
}

function isDigits(model) {
  return model.classes.length > 0 && model.classes.every((label) => /^[0-9]$/.test(label));
}

function onModelChange(predictAgain = true) {
  const model = currentModel();
  if (!model) return;
  localStorage.setItem("pixelgate.model", model.name);
  const [height, width, channels] = model.input.shape;
  const classes = model.classes.length;
  $("model-info").textContent = `v${model.version} · input ${height}×${width}×${channels} · ${classes} classes: ` +
    model.classes.join(", ");
  $("model-info").title = model.classes.join(", ");
  const topK = $("top-k");
  const previous = Number(topK.value) || 3;
  topK.innerHTML = "";
  for (let k = 1; k <= Math.min(10, classes || 10); k += 1) {
    const option = document.createElement("option");
    option.value = option.textContent = String(k);
    topK.append(option);
  }
  topK.value = String(Math.min(previous, topK.options.length));
  const drawable = canDraw(model);
  $("draw-hint").textContent = isDigits(model)
    ? "Draw a digit, white on black; it is classified as you lift the pen."
    : `Draw a ${model.classes.slice(0, 3).join(", ").toLowerCase()}, … in white on black.`;
  $("tab-draw").disabled = !drawable;
  $("tab-draw").title = drawable ? "" : "drawing is for the 28×28 models; upload an image instead";
  if (!drawable) selectTab("upload");
  else if (state.inputKind !== "upload") selectTab("draw");
  // A version exported without an explanation signature would answer every explained request 400.
  const explainable = model.explanation !== null;  // undefined: an older gateway, which does not say
  $("explain").disabled = !explainable;
  $("explain").parentElement.title = explainable
    ? "explain=true: a heatmap of the pixels that pushed the model towards its label"
    : `${model.name} v${model.version} was exported without explanations`;
  if (predictAgain && state.input) predict(state.input);
}

// ---- input: tabs, canvas, upload --------------------------------------------------------------

function selectTab(name) {
  for (const tab of ["draw", "upload"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`panel-${tab}`).hidden = tab !== name;
  }
}

function setUpCanvas() {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  let drawing = false;
  let drawn = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    drawn = true;
    canvas.setPointerCapture(event.pointerId);
    context.strokeStyle = "#fff";
    context.fillStyle = "#fff";
    context.lineWidth = 24;  // about 2.4 pixels at 28×28, like MNIST's pen
    context.lineCap = "round";
    context.lineJoin = "round";
    const [x, y] = point(event);
    context.beginPath();
    context.arc(x, y, context.lineWidth / 2, 0, 2 * Math.PI);
    context.fill();
    context.beginPath();
    context.moveTo(x, y);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const [x, y] = point(event);
    context.lineTo(x, y);
    context.stroke();
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    state.inputKind = "draw";
    canvas.toBlob((blob) => { if (blob && drawn) predict(blob); }, "image/png");
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("clear").addEventListener("click", () => {
    clear();
    drawn = false;
    state.input = null;
    resetResult();
  });
}

function useFile(file) {
  if (!file) return;
  state.inputKind = "upload";
  selectTab("upload");
  const preview = $("upload-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.classList.remove("small");
  preview.onload = () => preview.classList.toggle("small", preview.naturalWidth < 128 && preview.naturalHeight < 128);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").innerHTML = `<strong>${escapeHtml(file.name || "pasted image")}</strong><br>drop or choose another image`;
  predict(file);
}

function setUpUpload() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => useFile(event.target.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) useFile(item.getAsFile());
  });
}

// ---- predict and show the answer ----------------------------------------------------------------

async function predict(blob) {
  const model = currentModel();
  if (!model) return;
  state.input = blob;
  const sequence = ++state.sequence;  // answers to older requests are dropped when they arrive late
  const form = new FormData();
  form.append("image", blob, blob.name || "image.png");
  const explain = $("explain").checked && !$("explain").disabled;
  const query = new URLSearchParams({ top_k: $("top-k").value || "3", debug: "true" });
  if (explain) query.set("explain", "true");
  $("result").dataset.state = "loading";
  const started = performance.now();
  try {
    const body = await api(`/v1/models/${encodeURIComponent(model.name)}:predict?${query}`, { method: "POST", body: form });
    if (sequence === state.sequence) showPrediction(body, performance.now() - started, explain);
  } catch (error) {
    if (sequence === state.sequence) showError(error);
  }
}

function percent(probability) {
  const value = probability * 100;
  return value >= 99.95 ? "100%" : value >= 0.1 ? `${value.toFixed(1)}%` : "<0.1%";
}

function showPrediction(body, milliseconds, explained) {
  const prediction = body.predictions[0];
  $("error").hidden = true;
  const label = $("result-label");
  label.textContent = prediction.label;
  label.classList.toggle("long", prediction.label.length > 2);
  $("result-probability").textContent = `${percent(prediction.probability)} sure`;
  const info = state.models.find((m) => m.name === body.model && m.version === body.version);
  const ood = info && info.out_of_distribution;
  const score = typeof prediction.ood_score === "number"
    ? ` · OOD score ${prediction.ood_score.toFixed(2)}${ood ? ` (flagged above ${ood.threshold.toFixed(2)})` : ""}`
    : "";
  $("result-served").textContent = `${body.model} v${body.version} · ${Math.round(milliseconds)} ms${score}`;
  showDistributionNotice(prediction, body.model);
  const bars = $("bars");
  bars.innerHTML = "";
  prediction.top_k.forEach((score, index) => {
    const row = document.createElement("li");
    row.className = index === 0 ? "bar-row top" : "bar-row";
    row.dataset.label = score.label;
    row.innerHTML = `<span class="bar-label"></span><span class="bar-track"><span class="bar-fill"></span></span><span class="bar-value"></span>`;
    row.querySelector(".bar-label").textContent = score.label;
    row.querySelector(".bar-value").textContent = percent(score.probability);
    row.querySelector(".bar-fill").style.width = `${Math.max(0.5, score.probability * 100)}%`;
    bars.append(row);
  });
  showPreprocessed(prediction.preprocessed, body.model);
  showExplanation(prediction, explained);
  $("result").dataset.answers = String(Number($("result").dataset.answers || 0) + 1);  // lets tests wait for a fresh answer
  $("result").dataset.state = "done";
}

function showPreprocessed(encoded, model) {
  const image = $("preprocessed");
  const placeholder = $("preprocessed-placeholder");
  if (typeof encoded === "string" && encoded.length > 0) {
    image.src = encoded.startsWith("data:") ? encoded : `data:image/png;base64,${encoded}`;
    image.hidden = false;
    placeholder.hidden = true;
    const info = state.models.find((m) => m.name === model);
    $("preprocessed-caption").textContent = info
      ? `${info.input.shape[0]}×${info.input.shape[1]} pixels, as the model received it (scaled up here)`
      : "as the model received it";
  } else {
    image.hidden = true;
    image.removeAttribute("src");
    placeholder.hidden = false;
    placeholder.textContent = "not available";
    $("preprocessed-caption").textContent = "this gateway does not return the preprocessed image (debug=true)";
  }
}

// What the model's training images are, in words, for "this does not look like …".
function trainingImagesNoun(model) {
  const name = model ? model.name.toLowerCase() : "";
  const classes = model ? model.classes : [];
  if (name.includes("fashion")) return "a clothing item";
  if (name.includes("mnist") || (model && isDigits(model))) return "a handwritten digit";
  if (name.includes("cifar") && classes.length > 0) {
    return `a photo of one of its ${classes.length} classes (${classes.slice(0, 3).join(", ")}, …)`;
  }
  return "the images this model was trained on";
}

// in_distribution: true, false, or null for a model version exported without a score (no notice then).
function showDistributionNotice(prediction, modelName) {
  const unlike = prediction.in_distribution === false;
  $("result").dataset.inDistribution = String(prediction.in_distribution ?? "unknown");
  $("ood-notice").hidden = !unlike;
  if (!unlike) return;
  const model = state.models.find((m) => m.name === modelName);
  $("ood-title").textContent = `This does not look like ${trainingImagesNoun(model)}.`;
  $("ood-detail").textContent = `“${prediction.label}” is only the closest of the classes the model knows: ` +
    "it was not trained on images like this one, so do not trust the label.";
}

// The heatmap (explain=true) lies over the image the model saw: same size, CSS opacity.
function showExplanation(prediction, requested) {
  const heatmap = $("heatmap");
  const caption = $("explain-caption");
  const explanation = prediction.explanation;
  if (explanation && typeof explanation.heatmap_png === "string" && explanation.heatmap_png.length > 0) {
    const encoded = explanation.heatmap_png;
    heatmap.src = encoded.startsWith("data:") ? encoded : `data:image/png;base64,${encoded}`;
    heatmap.hidden = false;
    const method = String(explanation.method || "saliency").replace(/_/g, " ");
    caption.textContent = `Overlay (${method}): strongest where the pixels pushed the model towards ` +
      `“${prediction.label}”. Point at it to see the image alone.`;
    caption.hidden = false;
  } else {
    heatmap.hidden = true;
    heatmap.removeAttribute("src");
    caption.textContent = "this gateway returned no explanation (explain=true)";
    caption.hidden = !requested;
  }
}

function showError(error) {
  clearAnswer("No answer: see the error below.");  // never the last answer beside this request's error
  const box = $("error");
  box.hidden = false;
  box.innerHTML = `<strong>${escapeHtml(error.message)}</strong>${error.code ? ` <code>${escapeHtml(error.code)}</code>` : ""}`;
  $("result").dataset.answers = String(Number($("result").dataset.answers || 0) + 1);
  $("result").dataset.state = "error";
}

function resetResult() {
  state.sequence += 1;
  clearAnswer("Draw or upload an image to see what the model thinks.");
  $("error").hidden = true;
  $("preprocessed-placeholder").textContent = "no image yet";
  $("result").dataset.state = "idle";
}

function clearAnswer(served) {
  $("result-label").textContent = "–";
  $("result-label").classList.remove("long");
  $("result-probability").innerHTML = "&nbsp;";
  $("result-served").textContent = served;
  $("bars").innerHTML = "";
  $("preprocessed").hidden = true;
  $("preprocessed-placeholder").hidden = false;
  $("ood-notice").hidden = true;
  $("heatmap").hidden = true;
  $("heatmap").removeAttribute("src");
  $("explain-caption").hidden = true;
  delete $("result").dataset.inDistribution;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ---- start ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  setUpCanvas();
  setUpUpload();
  $("tab-draw").addEventListener("click", () => selectTab("draw"));
  $("tab-upload").addEventListener("click", () => selectTab("upload"));
  $("model-select").addEventListener("change", () => onModelChange(true));
  $("top-k").addEventListener("change", () => { if (state.input) predict(state.input); });
  $("explain").checked = localStorage.getItem("pixelgate.explain") === "true";
  $("explain").addEventListener("change", () => {
    localStorage.setItem("pixelgate.explain", String($("explain").checked));
    if (state.input) predict(state.input);
  });
  $("token-save").addEventListener("click", () => {
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("pixelgate.token", state.token);
    $("token-box").hidden = true;
    loadModels();
    refreshStatus();
  });
  refreshStatus();
  setInterval(refreshStatus, 10000);
  loadModels();
});
