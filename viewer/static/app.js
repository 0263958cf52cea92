// The visualizer page: every control edits `view`; each change is sent at once over one WebSocket, and the server
// renders only the newest view of this tab, so the image follows the controls without a backlog.
"use strict";

const $ = (id) => document.getElementById(id);
let network = null;        // The opened network's description (from /api/open).
let socket = null;
let sentId = 0, shownId = 0;
const shownTimes = [];     // When images were shown, for the frame rate.

// ---------------------------------------------------------------- the view

function currentView() {
  const info = network || {};
  const cutoff = Number($("cutoff").value);
  const channel = Number($("channel").value);
  const scale = Number($("scale").value);
  return {
    x: Number($("x").value), y: Number($("y").value),
    psi: Number($("psi").value),
    cutoff: cutoff >= (info.num_ws || 0) ? null : cutoff,
    class_idx: $("class_idx").value === "" ? null : Number($("class_idx").value),
    noise_mode: $("noise_mode").value, noise_seed: Number($("noise_seed").value),
    mix_seed: Number($("mix_seed").value),
    mix_layers: [...document.querySelectorAll("#mix-layers input:checked")].map((box) => Number(box.value)),
    translate: info.can_transform ? [Number($("tx").value), Number($("ty").value)] : [0, 0],
    rotate_deg: info.can_transform ? Number($("rotate_deg").value) : 0,
    scale: info.can_scale && scale !== 1 ? scale : null,
    force_fp32: $("force_fp32").checked,
    layer: $("layer").value || null,
    channels: $("rgb").checked ? [channel, channel + 1, channel + 2] : [channel],
    normalize: $("normalize").checked, gain_db: Number($("gain_db").value),
    fft_beta: Number($("fft_beta").value), fft_range_db: Number($("fft_range_db").value),
  };
}

function requestRender() {
  updateOutputs();
  if (!network || !socket || socket.readyState !== WebSocket.OPEN) return;
  sentId += 1;
  socket.send(JSON.stringify({ id: sentId, network: network.path, view: currentView() }));
}

function updateOutputs() {
  $("psi-out").textContent = $("psi").value;
  const cutoff = Number($("cutoff").value);
  $("cutoff-out").textContent = network && cutoff >= network.num_ws ? "all" : String(cutoff);
  $("tx-out").textContent = $("tx").value;
  $("ty-out").textContent = $("ty").value;
  $("rotate-out").textContent = $("rotate_deg").value + "°";
  $("gain-out").textContent = $("gain_db").value;
}

// ---------------------------------------------------------------- the server

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/api/render`);
  socket.onopen = requestRender;
  socket.onmessage = (event) => show(JSON.parse(event.data));
  socket.onclose = () => { showMessage("Lost the connection to visualizer.py; trying again..."); setTimeout(connect, 1000); };
}

function show(answer) {
  if (answer.id < shownId) return;   // An older answer that arrived late: the newer one is already shown.
  shownId = answer.id;
  if (answer.error) { showMessage(answer.error); return; }
  showMessage(null);
  $("image").src = answer.image;
  $("image").dataset.request = String(answer.id);   // Which view the image shows (the tests wait on it).
  $("image-caption").textContent = `${answer.size[1]}×${answer.size[0]}`;
  const layerShown = Boolean(answer.layer_image);
  $("layer-figure").hidden = $("spectrum-figure").hidden = !layerShown;
  if (layerShown) {
    $("layer-image").src = answer.layer_image;
    $("spectrum-image").src = answer.spectrum_image;
    const s = answer.stats, f = (v) => v.toPrecision(3);
    $("stats").textContent = `all channels: mean ${f(s.mean)} std ${f(s.std)} max ${f(s.max)} · ` +
      `shown: mean ${f(s.shown_mean)} std ${f(s.shown_std)} max ${f(s.shown_max)}`;
  }
  const now = performance.now();
  shownTimes.push(now);
  while (shownTimes.length && now - shownTimes[0] > 1000) shownTimes.shift();
  $("timing").textContent = `render ${answer.render_ms.toFixed(1)} ms · total ${answer.total_ms.toFixed(1)} ms · ` +
    `${shownTimes.length} frames/s`;
}

function showMessage(text) {
  $("message").hidden = !text;
  $("message").textContent = text || "";
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) return { error: (await response.text()).trim() || `${path}: HTTP ${response.status}` };
  return response.json();
}

// ---------------------------------------------------------------- networks

async function openNetwork(value) {
  if (!value) return;
  $("open-button").disabled = true;
  $("network-info").textContent = `Loading ${value}...`;
  const info = await api("/api/open", { network: value });
  $("open-button").disabled = false;
  if (info.error) { $("network-info").textContent = ""; showMessage(info.error); return; }
  network = info;
  $("network-input").value = value;
  $("network-info").textContent = `${info.name}: ${info.kind}, ${info.resolution}×${info.resolution}, ` +
    `${info.num_ws} ws, ${info.c_dim ? info.c_dim + " classes" : "unconditional"}`;
  setUpControls(info);
  await loadState();
  requestRender();
}

function setUpControls(info) {
  const classes = $("class_idx");
  classes.length = 1;
  for (let c = 0; c < info.c_dim; c++) classes.add(new Option(String(c), String(c)));
  $("class-row").classList.toggle("disabled", info.c_dim === 0);
  $("cutoff").max = String(info.num_ws);
  $("cutoff").value = String(info.num_ws);
  const mix = $("mix-layers");
  mix.replaceChildren();
  for (let i = 0; i < info.num_ws; i++) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" value="${i}"> ${i}`;
    mix.append(label);
  }
  for (const id of ["noise_mode", "noise_seed"]) $(id).parentElement.classList.toggle("disabled", !info.has_noise);
  for (const id of ["tx", "ty", "rotate_deg"]) $(id).parentElement.classList.toggle("disabled", !info.can_transform);
  $("scale").parentElement.classList.toggle("disabled", !info.can_scale);
  $("force_fp32").parentElement.classList.toggle("disabled", !info.has_fp16);
  const layers = $("layer");
  layers.length = 1;
  for (const layer of info.layers) {
    const [c, h, w] = layer.shape;
    layers.add(new Option(`${layer.name}  ${w}×${h}×${c}  ${layer.dtype}`, layer.name));
  }
}

async function loadState() {
  const state = await api("/api/state");
  const recent = $("recent");
  recent.length = 1;
  for (const value of state.recent || []) recent.add(new Option(value, value));
  $("browser").hidden = !state.browse;
  return state;
}

async function browse(path) {
  const listing = await api(`/api/browse?path=${encodeURIComponent(path)}`);
  if (listing.error) { showMessage(listing.error); return; }
  $("browse-path").textContent = `--browse-dir/${listing.folder}`;
  const list = $("browse-list");
  list.replaceChildren();
  const item = (text, onClick) => {
    const li = document.createElement("li");
    li.textContent = text;
    li.onclick = onClick;
    list.append(li);
  };
  if (listing.parent !== null) item("../", () => browse(listing.parent));
  for (const folder of listing.folders) {
    item(`${folder.name}/`, () => browse(folder.path));
    if (folder.newest) item(`    open its newest snapshot`, () => openNetwork(folder.newest));
  }
  for (const snapshot of listing.snapshots) item(snapshot.name, () => openNetwork(snapshot.path));
}

// ---------------------------------------------------------------- latent navigation

function dragToMove() {
  let start = null;
  const image = $("image");
  image.addEventListener("pointerdown", (event) => {
    start = { px: event.clientX, py: event.clientY, x: Number($("x").value), y: Number($("y").value) };
    image.setPointerCapture(event.pointerId);
  });
  image.addEventListener("pointermove", (event) => {
    if (!start) return;
    const seedsPerPixel = 4 / Math.max(image.clientWidth, 1);   // Four seeds across the image.
    $("x").value = (start.x - (event.clientX - start.px) * seedsPerPixel).toFixed(3);
    $("y").value = (start.y - (event.clientY - start.py) * seedsPerPixel).toFixed(3);
    requestRender();
  });
  image.addEventListener("pointerup", () => { start = null; });
}

function animate() {
  let last = performance.now();
  const step = (now) => {
    if ($("animate").checked && network) {
      const dx = Number($("speed").value) * (now - last) / 1000;
      $("x").value = (Number($("x").value) + dx).toFixed(3);
      requestRender();
    }
    last = now;
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}

// ---------------------------------------------------------------- wiring

async function capture() {
  const result = await api("/api/capture", { network: network && network.path, view: currentView() });
  if (result.error) { showMessage(result.error); return; }
  $("capture-result").textContent = `Saved ${result.file}. ` +
    (result.command ? `Same pixels: ${result.command}` : `No gen_images.py command gives these pixels: ${result.why_not}.`);
  if (result.command && navigator.clipboard) navigator.clipboard.writeText(result.command).catch(() => {});
}

function wire() {
  for (const element of document.querySelectorAll("#controls input, #controls select")) {
    if (["network-input", "recent", "animate", "speed"].includes(element.id)) continue;
    element.addEventListener(element.tagName === "SELECT" ? "change" : "input", requestRender);
  }
  $("mix-layers").addEventListener("change", requestRender);
  $("open-form").addEventListener("submit", (event) => { event.preventDefault(); openNetwork($("network-input").value.trim()); });
  $("recent").addEventListener("change", () => openNetwork($("recent").value));
  $("snap").onclick = () => { $("x").value = Math.round($("x").value); $("y").value = Math.round($("y").value); requestRender(); };
  $("reset").onclick = () => { $("x").value = 0; $("y").value = 0; $("animate").checked = false; requestRender(); };
  $("capture").onclick = capture;
  dragToMove();
  animate();
}

async function main() {
  wire();
  updateOutputs();
  connect();
  const state = await loadState();
  if (state.browse) browse("");
  if (state.recent && state.recent.length) openNetwork(state.recent[0]);
}

main();
