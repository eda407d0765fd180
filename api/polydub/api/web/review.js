// Review and re-dub on the web page: a language's segments as an editable table (source text,
// translation, times), a voice per speaker, play buttons for the original and the dubbed audio
// of a segment, save
// (PATCH with If-Match) and re-render. Loaded after app.js, whose helpers (api, el, $,
// showError, formatTime, openJob) it uses; server data goes into the page as text only.
"use strict";

const review = { jobId: null, language: null, etag: null, segments: [], voices: {}, choices: [], stopAt: null };

async function showReview(jobId, language) {
  review.jobId = jobId;
  review.language = language;
  let data;
  try {
    data = await api(`/jobs/${jobId}/languages/${language}/segments`);
  } catch (error) {
    $("review").hidden = true;
    return;
  }
  try {
    review.choices = (await api(`/voices?language=${encodeURIComponent(language)}`)).voices;
  } catch (error) {
    review.choices = []; // no choice offered: the cast stays as it is
  }
  fillReview(data);
  $("review").hidden = false;
}

// One select per speaker: the language's voices (the model's own, then its pitch variants).
function fillVoices(data) {
  const box = $("review-voices");
  box.replaceChildren();
  for (const [speaker, current] of Object.entries(data.voices)) {
    const select = el("select", { class: "edit-voice", "data-speaker": speaker });
    for (const voice of review.choices) {
      const label = voice.f0 ? `${voice.id} (${voice.gender}, ${voice.f0} Hz)` : `${voice.id} (automatic)`;
      select.append(el("option", { value: voice.id, text: label }));
    }
    if (!review.choices.some((v) => v.id === current)) select.append(el("option", { value: current, text: current }));
    select.value = current;
    box.append(el("label", {}, el("span", { class: "speaker", text: speaker }), select));
  }
}

function fillReview(data) {
  review.etag = data.etag;
  review.segments = data.segments;
  review.voices = data.voices;
  fillVoices(data);
  $("review-version").textContent = `version ${data.version}${data.edited ? ", edited: not rendered yet" : ""}`;
  $("review-state").textContent = "";
  const body = $("review-table").querySelector("tbody");
  body.replaceChildren();
  for (const segment of data.segments) {
    const start = el("input", { type: "number", step: "0.01", min: "0", class: "edit-start", value: String(segment.start) });
    const end = el("input", { type: "number", step: "0.01", min: "0", class: "edit-end", value: String(segment.end) });
    const source = el("textarea", { class: "edit-source", rows: "2" });
    source.value = segment.source_text;
    const translation = el("textarea", { class: "edit-translation", rows: "2" });
    translation.value = segment.translation;
    const playOriginal = el("button", { type: "button", class: "play-original", text: "▶ original" });
    playOriginal.addEventListener("click", () => playSpan("original", segment));
    const playDubbed = el("button", { type: "button", class: "play-dubbed", text: "▶ dubbed" });
    playDubbed.addEventListener("click", () => playSpan("dubbed", segment));
    const fit = segment.fit ? `rate ${segment.fit.rate}, stretch ${Number(segment.fit.stretch).toFixed(2)}` : "";
    body.append(el("tr", { "data-id": String(segment.id) },
      el("td", { class: "time" }, start, end),
      el("td", { class: "speaker", text: segment.speaker }),
      el("td", {}, source),
      el("td", {}, translation),
      el("td", { class: "muted", text: fit }),
      el("td", {}, playOriginal, playDubbed)));
  }
}

function playSpan(player, segment) {
  const media = $(player);
  if (!media.src) return;
  media.currentTime = segment.start;
  review.stopAt = { media, end: segment.end };
  media.play().catch(() => {});
}

function stopAtSpanEnd(event) {
  const stop = review.stopAt;
  if (stop && event.target === stop.media && stop.media.currentTime >= stop.end) {
    stop.media.pause();
    review.stopAt = null;
  }
}

function reviewEdits() {
  const edits = [];
  for (const row of $("review-table").querySelectorAll("tbody tr")) {
    const before = review.segments.find((s) => String(s.id) === row.dataset.id);
    if (!before) continue;
    const edit = { id: before.id };
    const start = Number(row.querySelector(".edit-start").value);
    const end = Number(row.querySelector(".edit-end").value);
    const source = row.querySelector(".edit-source").value;
    const translation = row.querySelector(".edit-translation").value;
    if (start !== before.start) edit.start = start;
    if (end !== before.end) edit.end = end;
    if (source !== before.source_text) edit.source_text = source;
    if (translation !== before.translation) edit.translation = translation;
    if (Object.keys(edit).length > 1) edits.push(edit);
  }
  return edits;
}

function voiceEdits() {
  const voices = {};
  for (const select of $("review-voices").querySelectorAll("select")) {
    if (select.value !== review.voices[select.dataset.speaker]) voices[select.dataset.speaker] = select.value;
  }
  return voices;
}

async function saveReview() {
  const edits = reviewEdits();
  const voices = voiceEdits();
  if (!edits.length && !Object.keys(voices).length) return true;
  try {
    const data = await api(`/jobs/${review.jobId}/languages/${review.language}/segments`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json", "If-Match": review.etag },
      body: JSON.stringify({ segments: edits, voices }),
    });
    fillReview(data);
    showError("");
    return true;
  } catch (error) {
    showError(`The edits were not saved: ${error.message}`);
    return false;
  }
}

async function renderReview() {
  if (!(await saveReview())) return;
  const { jobId, language } = review;
  let out;
  try {
    out = await api(`/jobs/${jobId}/languages/${language}/render`, {
      method: "POST",
      headers: { "If-Match": review.etag },
    });
  } catch (error) {
    showError(`The render did not start: ${error.message}`);
    return;
  }
  $("review-state").textContent = `rendering version ${out.version}…`;
  $("render").disabled = true;
  try {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const job = await api(`/jobs/${jobId}`);
      const target = job.targets.find((t) => t.language === language);
      if (SETTLED.has(job.status) && target && TERMINAL.has(target.status)) {
        openJob(job);
        break;
      }
    }
  } finally {
    $("render").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("save-edits").addEventListener("click", saveReview);
  $("render").addEventListener("click", renderReview);
  for (const id of ["original", "dubbed"]) $(id).addEventListener("timeupdate", stopAtSpanEnd);
});
