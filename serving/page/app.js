// The "find similar cases" page: one form posted to /search with fetch(FormData), results drawn as a grid.
// Vanilla JS, no external assets: the page must work on a machine with no internet access.
// Every request but the health probe carries the bearer token, kept in sessionStorage (this tab only, gone when it
// closes); thumbnails are fetched with it too and shown from blob URLs, so the token never sits in a URL.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "m3ret-token";

function authFetch(url, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  return fetch(url, { ...options, headers });
}

async function showImage(img, url) {
  const response = await authFetch(url);
  if (!response.ok) return;
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await response.blob());
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function text(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = content;
  return node;
}

async function checkHealth() {
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    $("health").textContent =
      `model ${health.model_version} · collection ${health.collection || "none"} · ${health.rows} rows` +
      (health.status === "ok" ? "" : " · not ready");
    if (health.max_k) $("k").max = health.max_k;
  } catch (err) {
    $("health").textContent = "service unreachable";
  }
}

let lastQuery = null; // the file of the last search: explanations compare it with a hit
let openHit = null;

async function toggleExplanation() {
  const button = $("overlay-explain");
  if (button.getAttribute("aria-pressed") === "true") {
    button.setAttribute("aria-pressed", "false");
    showImage($("overlay-image"), openHit.thumbnail_url);
    return;
  }
  const form = new FormData();
  form.append("file", lastQuery, lastQuery.name);
  form.append("item_id", openHit.item_id);
  if (openHit.level === "frame" && openHit.frame_index >= 0) form.append("frame", openHit.frame_index);
  button.disabled = true;
  try {
    const response = await authFetch("/explain", { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showError(`${response.status}: ${body.error || "cannot explain this hit"}`);
      return;
    }
    const img = $("overlay-image");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await response.blob());
    button.setAttribute("aria-pressed", "true");
  } finally {
    button.disabled = false;
  }
}

function openOverlay(hit) {
  openHit = hit;
  $("overlay-explain").setAttribute("aria-pressed", "false");
  // a token with the reidentify scope gets the hit's study; everyone else sees only hashes
  const link = hit.study && hit.study.viewer_url;
  $("overlay-study").hidden = !link;
  if (link) $("overlay-study").href = link;
  showImage($("overlay-image"), hit.thumbnail_url);
  $("overlay-caption").textContent =
    `#${hit.rank} · score ${hit.score.toFixed(4)} · ${hit.modality} · ${hit.dataset} · ${hit.kind}` +
    (hit.label ? ` · ${hit.label}` : "") + (hit.level === "frame" ? ` · frame ${hit.frame_index}` : "");
  $("overlay").hidden = false;
  $("overlay-close").focus();
}

function closeOverlay() {
  $("overlay").hidden = true;
  $("overlay-image").removeAttribute("src");
}

function tile(hit) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  button.dataset.itemId = hit.item_id;
  button.dataset.rank = hit.rank;
  const img = document.createElement("img");
  img.alt = `hit ${hit.rank}`;
  showImage(img, hit.thumbnail_url);
  button.append(
    img,
    text("span", "score", `#${hit.rank} · ${hit.score.toFixed(3)}`),
    text("span", "modality", hit.modality || "?"),
    text("span", "dataset", hit.dataset || ""),
  );
  button.addEventListener("click", () => openOverlay(hit));
  return button;
}

function render(result) {
  $("query-preview").src = result.query.preview_png;
  $("query-caption").textContent =
    `${result.query.kind} · ${result.query.modality || "?"} · ${result.query.n_frames} frame(s)`;
  const grid = $("hits");
  grid.replaceChildren(...result.hits.map(tile));
  const t = result.timing_ms;
  $("status").textContent =
    `${result.hits.length} hits · decode ${t.decode} ms · ` +
    `encode ${t.encode} ms · search ${t.search} ms`;
  $("results").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const file = $("file").files[0];
  if (!file) {
    showError("Pick a file first.");
    return;
  }
  lastQuery = file;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("k", $("k").value || "10");
  form.append("modality", $("modality").value.trim());
  form.append("level", $("level").value);
  $("submit").disabled = true;
  $("status").textContent = "searching…";
  try {
    const response = await authFetch("/search", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      $("status").textContent = "";
      $("results").hidden = true;
      showError(`${response.status}: ${body.error || JSON.stringify(body)}`);
      return;
    }
    render(body);
  } catch (err) {
    $("status").textContent = "";
    showError(`request failed: ${err}`);
  } finally {
    $("submit").disabled = false;
  }
}

function setUpDrop() {
  const drop = $("drop");
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files[0]) $("drop-text").textContent = input.files[0].name;
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
}

$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, $("token").value.trim()));
$("query-form").addEventListener("submit", submit);
$("overlay-close").addEventListener("click", closeOverlay);
$("overlay-explain").addEventListener("click", toggleExplanation);
$("overlay").addEventListener("click", (event) => {
  if (event.target === $("overlay")) closeOverlay();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeOverlay();
});
setUpDrop();
checkHealth();
