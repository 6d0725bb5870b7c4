// ddim serve: the page. Plain JavaScript, no build step. Each section sets data-state on itself
// (idle, running, done, error) so that people and tests can tell where it is.
"use strict";

const $ = (selector) => document.querySelector(selector);

function setState(section, state, text) {
  section.dataset.state = state;
  const status = section.querySelector(".status");
  status.textContent = text;
  status.classList.toggle("error", state === "error");
}

function formValues(form) {
  // The form's fields as a JSON body; disabled fields are not sent, nor empty ones (the server's default).
  const values = {};
  for (const [key, value] of new FormData(form)) {
    if (value instanceof File || key === "preview" || value === "") continue;
    const element = form.elements[key];
    values[key] = element.type === "number" || "numeric" in element.dataset ? Number(value) : value;
  }
  return values;
}

async function explain(response) {
  // One line for a failed request: the server's message, and when to retry if it is busy.
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.message || JSON.stringify(body.detail) || message;
  } catch (_) { /* not JSON: keep the status line */ }
  // a 429's message already says when to retry (Retry-After): it is shown as it is
  return message;
}

async function* serverSentEvents(response) {
  // Parse a text/event-stream body read with fetch (EventSource cannot POST).
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { event, data: JSON.parse(data) };
    }
  }
}

const ms = (seconds) => `${(seconds * 1000).toFixed(0)} ms`;

function clearResult(...elements) {
  // After an error, the previous result must not stay on screen as if it were the answer.
  for (const element of elements) element.hidden = true;
}

function stepsNote(asked, got, spacing) {
  // A spacing can merge timesteps (quadratic 50 → 49, logsnr 200 → 177): say so.
  return got === asked ? `${got} steps` : `${got} steps (${asked} asked: the ${spacing} spacing repeats timesteps)`;
}

// --- Settings in the URL: shareable, restored on load ------------------------------------------
const SHARED = ["steps", "sampler", "eta", "spacing", "seed", "n", "classes", "guidance"];

function saveSettings() {
  const form = $("#sample-form"), query = new URLSearchParams();
  for (const name of SHARED) {
    const element = form.elements[name];
    if (element && !element.disabled && element.value !== "") query.set(name, element.value);
  }
  query.set("preview", form.elements.preview.value);
  history.replaceState(null, "", `?${query}`);
}

function restoreSettings() {
  const form = $("#sample-form"), query = new URLSearchParams(location.search);
  for (const name of [...SHARED, "preview"]) {
    if (!query.has(name)) continue;
    const value = query.get(name);
    if (name === "preview") {
      for (const radio of form.querySelectorAll("input[name=preview]")) radio.checked = radio.value === value;
    } else if (form.elements[name].tagName !== "SELECT" || [...form.elements[name].options].some((o) => o.value === value)) {
      form.elements[name].value = value;
    }
  }
  syncEta();
  if (!form.elements.classes.disabled) syncGuidance(form);
}

// --- History of results ------------------------------------------------------------------------
const HISTORY = 6;

function remember(src, alt) {
  const list = $("#history"), button = document.createElement("button"), image = new Image();
  image.src = src;
  image.alt = alt;
  button.type = "button";
  button.title = alt;
  button.append(image);
  button.addEventListener("click", () => showSample(src, alt));
  const item = document.createElement("li");
  item.append(button);
  list.prepend(item);
  while (list.children.length > HISTORY) list.lastElementChild.remove();
  $("#history-view").hidden = false;
}

function showSample(src, alt) {
  const image = $("#sample-image"), link = $("#sample-download");
  image.src = src;
  image.alt = alt;
  image.hidden = false;
  link.href = src;
  link.hidden = false;
}

// --- Sample -------------------------------------------------------------------------------
let running = null; // the AbortController of the sampling request in flight

async function sample(event) {
  event.preventDefault();
  const section = $("#sample"), form = $("#sample-form"), image = $("#sample-image");
  const body = formValues(form);
  if (fixedEta[body.sampler] != null) delete body.eta;
  saveSettings();
  const preview = () => form.elements.preview.value;
  running = new AbortController();
  $("#stop-button").disabled = false;
  $("#stop-button").focus(); // the Sample button is about to be disabled: focus must not fall to <body>
  $("#sample-button").disabled = true;
  $("#sample-download").hidden = true;
  $("#sample-progress").value = 0;
  image.dataset.final = "false";
  setState(section, "running", "starting…");
  try {
    const response = await fetch("/api/sample/stream", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: running.signal,
    });
    if (!response.ok) throw new Error(await explain(response));
    let finished = false;
    for await (const { event, data } of serverSentEvents(response)) {
      if (event === "queued") {
        setState(section, "running", data.ahead ? `waiting: ${data.ahead} job(s) ahead…` : "sampling…");
      } else if (event === "step") {
        image.src = data[preview()];
        image.alt = `step ${data.step} of ${data.steps}: ${preview() === "x0" ? "predicted x0" : "x_t"}`;
        image.hidden = false;
        $("#sample-progress").value = data.step / data.steps;
        const left = (data.steps - data.step) * data.seconds / data.step;
        setState(section, "running", `step ${data.step}/${data.steps} (t = ${data.t}), ` +
          `${ms(data.seconds / data.step)} per step, about ${left.toFixed(1)} s left`);
      } else if (event === "done") {
        const alt = `${data.n} samples, ${data.steps} steps, seed ${body.seed}`;
        showSample(data.image, alt);
        remember(data.image, alt);
        image.dataset.final = "true";
        $("#sample-progress").value = 1;
        finished = true;
        setState(section, "done", `${data.n} images, ${stepsNote(body.steps, data.steps, body.spacing)} in ` +
          `${data.seconds.toFixed(2)} s (${ms(data.seconds / data.steps)} per step)`);
      } else if (event === "error") {
        throw new Error(data.message);
      }
    }
    if (!finished) throw new Error("the stream ended before the images were done");
  } catch (error) {
    if (error.name === "AbortError") setState(section, "idle", "stopped");
    else {
      clearResult(image, $("#sample-download"));
      setState(section, "error", `error: ${error.message}`);
    }
  } finally {
    running = null;
    $("#sample-button").disabled = false;
    if (document.activeElement === $("#stop-button") || document.activeElement === document.body) {
      $("#sample-button").focus(); // Stop is about to be disabled
    }
    $("#stop-button").disabled = true;
  }
}

function stop() {
  if (running) running.abort(); // closing the stream cancels the job on the server
}

let fixedEta = {}; // sampler → the η it fixes as shown ("0", "σ̂"), or null where any η goes (/api/model)

function syncEta() {
  // η is for the samplers that take any: for the others the field is disabled and shows theirs.
  const eta = $("#sample-form").elements.eta, sampler = $("#sample-form").elements.sampler.value;
  const off = fixedEta[sampler] != null;
  if (off && !eta.disabled) eta.dataset.kept = eta.value;
  if (!off && eta.disabled) eta.value = eta.dataset.kept ?? "0";
  eta.disabled = off;
  if (off) {
    eta.value = "";
    eta.placeholder = fixedEta[sampler];
  }
}

function syncGuidance(form) {
  // Guidance w weighs a class against the unconditional model: only with a class chosen.
  form.elements.guidance.disabled = form.elements.classes.disabled || form.elements.classes.value === "";
}

// --- Interpolate ----------------------------------------------------------------------------
let frames = [];

function showFrame() {
  const slider = $("#frame-slider"), i = Number(slider.value);
  const weight = frames.length > 1 ? i / (frames.length - 1) : 0;
  $("#interpolate-image").src = frames[i];
  $("#interpolate-download").href = frames[i];
  $("#interpolate-download").download = `ddim-frame-${i + 1}.png`;
  $("#interpolate-image").alt = `frame ${i + 1} of ${frames.length}, slerp weight ${weight.toFixed(2)}`;
  $("#frame-label").textContent = `${i + 1} / ${frames.length} (α = ${weight.toFixed(2)})`;
  slider.setAttribute("aria-valuetext", `frame ${i + 1} of ${frames.length}`);
}

async function interpolate(event) {
  event.preventDefault();
  const section = $("#interpolate"), button = $("#interpolate-button");
  button.disabled = true;
  setState(section, "running", "decoding the path…");
  const asked = performance.now();
  try {
    const response = await fetch("/api/interpolate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(formValues($("#interpolate-form"))),
    });
    if (!response.ok) throw new Error(await explain(response));
    const data = await response.json();
    frames = data.frames;
    const slider = $("#frame-slider");
    slider.max = String(frames.length - 1);
    slider.value = "0";
    $("#interpolate-view").hidden = false;
    showFrame();
    const total = (performance.now() - asked) / 1000; // waiting in the queue included
    setState(section, "done", `${frames.length} frames, ${data.steps} steps each, ${total.toFixed(2)} s ` +
      `(${data.seconds.toFixed(2)} s computing): move the slider (arrow keys work)`);
  } catch (error) {
    clearResult($("#interpolate-view"));
    setState(section, "error", `error: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

// --- Invert -------------------------------------------------------------------------------
async function invert(event) {
  event.preventDefault();
  const section = $("#invert"), form = $("#invert-form"), button = $("#invert-button");
  const file = form.elements.image.files[0];
  if (!file) return setState(section, "error", "choose an image file first");
  const { steps, spacing } = formValues(form);
  button.disabled = true;
  setState(section, "running", "inverting and decoding…");
  try {
    const query = new URLSearchParams({ steps, spacing });
    const response = await fetch(`/api/invert?${query}`, {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
    });
    if (!response.ok) throw new Error(await explain(response));
    const data = await response.json();
    $("#invert-input").src = data.input;
    $("#invert-output").src = data.reconstruction;
    $("#invert-mse").textContent = data.mse.toExponential(2);
    $("#invert-download").href = data.reconstruction;
    $("#invert-view").hidden = false;
    setState(section, "done", `S = ${data.steps} each way, ${data.seconds.toFixed(2)} s: ` +
      `per-pixel MSE ${data.mse.toExponential(2)} on [-1, 1]`);
  } catch (error) {
    clearResult($("#invert-view"));
    setState(section, "error", `error: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

// --- Set up from the server's model and limits -----------------------------------------------
function fillSelect(select, options, chosen) {
  select.replaceChildren(...options.map((name) => new Option(name, name, name === chosen, name === chosen)));
}

function showClasses(info, maxGuidance) {
  // A class-conditional model: offer its classes (by name, else by index) and the guidance weight.
  const classes = Array.from({ length: info.num_classes }, (_, k) => new Option(info.class_names[k] ?? String(k), k));
  for (const form of [$("#sample-form"), $("#interpolate-form")]) {
    const { classes: select, guidance } = form.elements;
    select.replaceChildren(new Option("unconditional", "", true, true), ...classes.map((o) => o.cloneNode(true)));
    select.disabled = false;
    guidance.max = maxGuidance;
    select.addEventListener("change", () => syncGuidance(form));
    syncGuidance(form);
  }
  for (const label of document.querySelectorAll("[data-conditional]")) label.hidden = false;
}

async function setUp() {
  const info = await (await fetch("/api/model")).json();
  const limits = info.limits;
  $("#model-name").textContent = `${info.name} · ${info.image_shape.join("×")} · T = ${info.num_timesteps}`;
  for (const select of document.querySelectorAll("select[name=spacing]")) fillSelect(select, info.spacings, "uniform");
  fixedEta = info.fixed_eta;
  fillSelect($("#sample-form").elements.sampler, info.samplers, "ddim");
  for (const input of document.querySelectorAll("input[name=steps]")) input.max = limits.max_steps;
  const n = $("#sample-form").elements.n;
  n.max = limits.max_n;
  n.value = Math.min(Number(n.value), limits.max_n);
  $("#interpolate-form").elements.frames.max = limits.max_frames;
  for (const input of document.querySelectorAll("input[name^=seed]")) input.max = limits.max_seed;
  if (info.num_classes) showClasses(info, limits.max_guidance);
  restoreSettings();
}

$("#sample-form").addEventListener("submit", sample);
$("#stop-button").addEventListener("click", stop);
$("#sample-form").elements.sampler.addEventListener("change", syncEta);
$("#interpolate-form").addEventListener("submit", interpolate);
$("#frame-slider").addEventListener("input", showFrame);
$("#invert-form").addEventListener("submit", invert);
for (const section of document.querySelectorAll("section")) section.dataset.state = "idle";
setUp().catch((error) => setState($("#sample"), "error", `cannot reach the server: ${error.message}`));
