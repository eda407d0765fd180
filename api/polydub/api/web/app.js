// polydub's web page: plain JavaScript, no dependencies, talks to /api/v1 with the key the
// user saved (localStorage). Progress comes from the SSE stream read through fetch(), so the
// key travels in the Authorization header, never in a URL. Server data is only ever put into
// the page as text (textContent), never as HTML.
"use strict";

const API = "/api/v1";
const KEY_STORAGE = "polydub.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// Where following a job stops: nothing happens until someone acts (a review waits for a render).
const SETTLED = new Set([...TERMINAL, "review"]);
const $ = (id) => document.getElementById(id);

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  languages: new Map(), // code -> name
  job: null,
  originalUrl: null, // object URL of the file this page uploaded
  originalLink: null, // {jobId, url}: the server's link to a job's original media
  stream: null, // AbortController of the event stream
  stages: new Map(), // job-wide stage -> <li>
  targets: new Map(), // language -> {bar, text}
};

// --- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  const response = await fetch(API + path, { ...options, headers });
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.error.code, body.error.message);
  } catch {
    return new ApiError(response.status, `http_${response.status}`, response.statusText);
  }
}

function formatTime(seconds) {
  const m = Math.floor(seconds / 60);
  const s = (seconds % 60).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function languageName(code) {
  return state.languages.get(code) || code;
}

// --- the API key

async function saveKey(event) {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  if (state.key) localStorage.setItem(KEY_STORAGE, state.key);
  else localStorage.removeItem(KEY_STORAGE);
  await loadLanguages();
}

async function loadLanguages() {
  showError("");
  $("submit").disabled = true;
  if (!state.key) {
    $("key-state").textContent = "no key";
    return;
  }
  try {
    const data = await api("/languages");
    $("key-state").textContent = "key accepted";
    renderLanguages(data);
    $("submit").disabled = false;
    loadJobs();
  } catch (error) {
    $("key-state").textContent = "";
    showError(`The API refused the key: ${error.message}`);
  }
}

function renderLanguages(data) {
  state.languages = new Map(data.languages.map((l) => [l.code, l.name]));
  const source = $("source");
  source.replaceChildren(el("option", { value: "auto", text: "detect automatically" }));
  for (const lang of data.languages.filter((l) => l.transcribe)) {
    source.append(el("option", { value: lang.code, text: `${lang.name} (${lang.code})` }));
  }
  const box = $("targets");
  box.replaceChildren(el("legend", { text: "Dub into" }));
  const targets = data.languages.filter((l) => l.dub_target);
  if (!targets.length) box.append(el("p", { class: "muted", text: "No voices installed." }));
  for (const lang of targets) {
    const input = el("input", { type: "checkbox", name: "target", value: lang.code });
    box.append(el("label", { class: "check" }, input, ` ${lang.name} (${lang.code})`));
  }
}

// --- submitting

function submitJob(event) {
  event.preventDefault();
  showError("");
  const file = $("file").files[0];
  const targets = [...document.querySelectorAll("input[name=target]:checked")].map((i) => i.value);
  if (!file) return showError("Choose a video or audio file.");
  if (!targets.length) return showError("Choose at least one language to dub into.");
  const form = new FormData();
  form.append("target_languages", targets.join(","));
  form.append("source_language", $("source").value);
  if ($("speakers").value) form.append("num_speakers", $("speakers").value);
  form.append("file", file, file.name);

  // XMLHttpRequest, not fetch: only it reports upload progress.
  const request = new XMLHttpRequest();
  request.open("POST", `${API}/jobs`);
  request.setRequestHeader("Authorization", `Bearer ${state.key}`);
  request.setRequestHeader("Idempotency-Key", crypto.randomUUID());
  request.responseType = "json";
  $("upload").hidden = false;
  $("submit").disabled = true;
  request.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    $("upload-bar").value = e.loaded / e.total;
    $("upload-text").textContent = `${(e.loaded / 1e6).toFixed(1)} / ${(e.total / 1e6).toFixed(1)} MB`;
  };
  request.onerror = () => {
    $("submit").disabled = false;
    resetUpload();
    showError("The upload failed: the API could not be reached.");
  };
  request.onload = () => {
    $("submit").disabled = false;
    const body = request.response;
    if (request.status !== 202 && request.status !== 200) {
      resetUpload();
      showError(`The upload was refused: ${body && body.error ? body.error.message : `HTTP ${request.status}`}`);
      return;
    }
    $("upload-bar").value = 1;
    $("upload-text").textContent = "uploaded";
    if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
    state.originalUrl = URL.createObjectURL(file);
    openJob(body, true);
  };
  request.send(form);
}

function resetUpload() {
  $("upload-bar").value = 0;
  $("upload-text").textContent = "";
  $("upload").hidden = true;
}

// --- following a job

function openJob(job, fromUpload = false) {
  if (!fromUpload) showError("");
  if (state.stream) state.stream.abort();
  if (!fromUpload && state.originalUrl) {
    URL.revokeObjectURL(state.originalUrl);
    state.originalUrl = null;
  }
  state.job = job;
  state.stages = new Map();
  state.targets = new Map();
  history.replaceState(null, "", `#job=${job.id}`);
  $("job").hidden = false;
  $("result").hidden = true;
  $("job-id").textContent = job.id;
  $("stages").replaceChildren();
  $("job-error").hidden = true;
  const box = $("languages");
  box.replaceChildren();
  for (const target of job.targets) {
    const bar = el("progress", { max: "1", value: String(target.progress) });
    const text = el("span", { class: "muted", text: target.stage || target.status });
    box.append(el("div", { class: "progress-row", "data-language": target.language },
      el("span", { text: languageName(target.language) }), bar, text));
    state.targets.set(target.language, { bar, text });
  }
  renderJob(job);
  if (SETTLED.has(job.status)) finish(job.id);
  else follow(job.id);
}

// Cancel applies while a job can still stop, retry once it failed or was cancelled.
function renderActions(status) {
  $("cancel-job").hidden = !["queued", "running", "review"].includes(status);
  $("retry-job").hidden = !["failed", "cancelled"].includes(status);
}

async function jobAction(method, suffix) {
  showError("");
  const jobId = state.job && state.job.id;
  if (!jobId) return;
  try {
    const job = await api(`/jobs/${jobId}${suffix}`, { method });
    openJob(job);
  } catch (error) {
    showError(error.message);
  }
}

function renderJob(job) {
  renderActions(job.status);
  $("job-status").textContent = job.status;
  $("job-status").dataset.status = job.status;
  $("job-bar").value = job.progress;
  $("job-text").textContent = `${job.percent}%` + (job.eta_seconds != null ? `, about ${Math.round(job.eta_seconds)} s left` : "");
  for (const target of job.targets) {
    const row = state.targets.get(target.language);
    if (!row) continue;
    row.bar.value = target.progress;
    row.text.textContent = target.status === "running" ? target.stage || "running" : target.status;
  }
}

function onEvent(event) {
  if (event.type === "progress") {
    $("job-bar").value = event.progress || 0;
    $("job-text").textContent = `${Math.round((event.progress || 0) * 100)}%` +
      (event.eta_seconds != null ? `, about ${Math.round(event.eta_seconds)} s left` : "");
    if (event.language) {
      finishStages();
      const row = state.targets.get(event.language);
      if (row) {
        row.bar.value = event.target_progress || 0;
        row.text.textContent = event.stage || "";
      }
    } else if (event.stage) {
      stageStarted(event.stage);
    }
  } else if (event.type === "target") {
    const row = state.targets.get(event.language);
    if (row) {
      if (event.status === "succeeded") row.bar.value = 1;
      row.text.textContent = event.error ? `${event.status}: ${event.error.message}` : event.status;
    }
  } else if (event.type === "state") {
    renderActions(event.status);
    $("job-status").textContent = event.status;
    $("job-status").dataset.status = event.status;
  }
}

function stageStarted(name) {
  if (state.stages.has(name)) return;
  finishStages();
  const item = el("li", { class: "running", "data-stage": name, text: name });
  $("stages").append(item);
  state.stages.set(name, item);
}

function finishStages() {
  for (const item of state.stages.values()) item.className = "done";
}

// The SSE stream through fetch (EventSource cannot send an Authorization header); on a drop it
// resumes after the last event id, and after repeated failures it polls the job instead.
async function follow(jobId) {
  const controller = new AbortController();
  state.stream = controller;
  let last = 0;
  let failures = 0;
  while (!controller.signal.aborted) {
    try {
      const response = await fetch(`${API}/jobs/${jobId}/events`, {
        headers: { Authorization: `Bearer ${state.key}`, "Last-Event-ID": String(last), Accept: "text/event-stream" },
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) throw await errorOf(response);
      for await (const message of sseMessages(response.body)) {
        failures = 0;
        const event = JSON.parse(message.data);
        last = event.id;
        onEvent(event);
        if (event.type === "state" && SETTLED.has(event.status)) {
          return finish(jobId);
        }
      }
      const job = await api(`/jobs/${jobId}`);
      if (SETTLED.has(job.status)) return finish(jobId);
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
        return showError(error.message);
      }
      failures += 1;
      if (failures > 3) return poll(jobId, controller);
      await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** failures));
    }
  }
}

async function* sseMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { data: "", event: "message", id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (message.data) yield message; // a comment-only block (keep-alive) has no data
        message = { data: "", event: "message", id: null };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data += (message.data ? "\n" : "") + value;
        else if (field === "event") message.event = value;
        else if (field === "id") message.id = value;
      }
    }
  }
}

async function poll(jobId, controller) {
  while (!controller.signal.aborted) {
    try {
      const job = await api(`/jobs/${jobId}`);
      renderJob(job);
      if (SETTLED.has(job.status)) return finish(jobId);
    } catch (error) {
      showError(error.message);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function finish(jobId) {
  const job = await api(`/jobs/${jobId}`);
  if (state.job && state.job.id !== job.id) return; // another job was opened meanwhile
  state.job = job;
  renderJob(job);
  finishStages();
  loadJobs();
  if (job.error) {
    $("job-error").textContent = `${job.status}: ${job.error.message} (${job.error.code})`;
    $("job-error").hidden = false;
  }
  // A language waiting in review gets a tab too: its segment table, before anything is spoken.
  const shown = job.targets.filter((t) => t.status === "succeeded" || t.status === "review");
  const done = shown.map((t) => t.language);
  if (!done.length) return;
  const tabs = $("result-tabs");
  tabs.replaceChildren();
  for (const target of shown) {
    const name = languageName(target.language) + (target.status === "review" ? " (review)" : "");
    const tab = el("button", { type: "button", "data-language": target.language, "data-status": target.status, text: name });
    tab.addEventListener("click", () => showResult(job.id, target.language));
    tabs.append(tab);
  }
  $("result").hidden = false;
  await showResult(job.id, done[0]);
}

async function showResult(jobId, language) {
  for (const tab of $("result-tabs").children) {
    tab.classList.toggle("active", tab.dataset.language === language);
  }
  const target = state.job && state.job.targets.find((t) => t.language === language);
  const waiting = !!target && target.status === "review"; // translated, nothing spoken yet
  const outputs = waiting ? { files: [] } : await api(`/jobs/${jobId}/outputs/${language}`);
  const files = new Map(outputs.files.map((f) => [f.kind, f]));
  const original = await originalSource(jobId);
  $("original-figure").hidden = !original;
  // Compared resolved: the server's link may be relative, the src property never is.
  if (original && $("original").src !== new URL(original, location.href).href) $("original").src = original;
  const media = files.get("dubbed_video") || files.get("dubbed_audio");
  $("dubbed-caption").textContent = `dubbed: ${languageName(language)}`;
  if (media) $("dubbed").src = media.url;
  else $("dubbed").removeAttribute("src");
  $("dubbed-figure").hidden = !media;
  $("players").hidden = !media && !(waiting && original);
  $("no-media").hidden = !!media || waiting;
  $("review-waiting").hidden = !waiting;
  $("render").textContent = waiting ? "Approve and render" : "Re-render";

  const list = $("downloads");
  list.replaceChildren();
  for (const file of outputs.files) {
    const link = el("a", { href: file.url, download: file.filename, class: "button", "data-kind": file.kind, text: file.filename });
    list.append(el("li", {}, link, el("span", { class: "muted", text: ` ${file.kind.replaceAll("_", " ")}, ${formatSize(file.size_bytes)}` })));
  }
  await showTranscript(files.get("transcript"));
  if (typeof showReview === "function") await showReview(jobId, language); // review.js
}

// The original media: the file this page uploaded, else the server's short-lived link to the
// job's input (so the original plays in any browser, for any job of the key).
async function originalSource(jobId) {
  if (state.originalUrl) return state.originalUrl;
  if (state.originalLink && state.originalLink.jobId === jobId) return state.originalLink.url;
  try {
    const link = await api(`/jobs/${jobId}/original?redirect=false`);
    state.originalLink = { jobId, url: link.url };
    return link.url;
  } catch (error) {
    return null; // not fetched yet, or expired: the page goes on without it
  }
}

async function showTranscript(file) {
  const body = $("transcript").querySelector("tbody");
  body.replaceChildren();
  if (!file) return;
  let transcript;
  try {
    const response = await fetch(file.url, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    transcript = await response.json();
  } catch (error) {
    body.append(el("tr", {}, el("td", { colspan: "4", class: "muted", text: `The transcript could not be loaded (${error.message}); download it instead.` })));
    return;
  }
  $("source-head").textContent = languageName(transcript.source_language);
  $("target-head").textContent = languageName(transcript.target_language);
  for (const segment of transcript.segments) {
    body.append(el("tr", {},
      el("td", { class: "time", text: `${formatTime(segment.start)}–${formatTime(segment.end)}` }),
      el("td", { class: "speaker", text: segment.speaker }),
      el("td", { text: segment.source_text }),
      el("td", { text: segment.text })));
  }
}

// --- recent jobs

async function loadJobs() {
  if (!state.key) return;
  $("key-hint").hidden = true;
  try {
    const page = await api("/jobs?limit=10");
    const list = $("jobs");
    list.replaceChildren();
    for (const job of page.items) {
      const link = el("a", { href: `#job=${job.id}`, text: job.input.filename || job.id });
      link.addEventListener("click", async (e) => {
        e.preventDefault();
        openJob(await api(`/jobs/${job.id}`));
      });
      const targets = job.target_languages.join(", ");
      list.append(el("li", {}, link, el("span", { class: "badge", "data-status": job.status, text: job.status }),
        el("span", { class: "muted", text: ` → ${targets}, ${new Date(job.created_at).toLocaleString()}` })));
    }
  } catch (error) {
    showError(error.message);
  }
}

// --- start

async function start() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", saveKey);
  $("job-form").addEventListener("submit", submitJob);
  $("cancel-job").addEventListener("click", () => jobAction("DELETE", ""));
  $("retry-job").addEventListener("click", () => jobAction("POST", "/retry"));
  await loadLanguages();
  const match = location.hash.match(/^#job=([0-9a-f-]{36})$/);
  if (match && state.key) {
    try {
      openJob(await api(`/jobs/${match[1]}`));
    } catch (error) {
      showError(error.message);
    }
  }
}

document.addEventListener("DOMContentLoaded", start);
