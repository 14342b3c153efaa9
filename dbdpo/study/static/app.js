// One task at a time: three questions, each answered "1", "2" or "none" (Can't decide); submitted together.
"use strict";
const token = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const CHOICES = [["1", "1"], ["2", "2"], ["none", "Can't decide"]];
let current = null;   // the task shown
let answers = {};     // question number → answer
let questions = {};
let busy = false;

function $(id) { return document.getElementById(id); }

function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }

function activeQuestion() {
  for (const q of Object.keys(questions)) if (!(q in answers)) return q;
  return null;
}

function renderQuestions() {
  const box = $("questions");
  box.textContent = "";
  const active = activeQuestion();
  for (const [q, text] of Object.entries(questions)) {
    const div = document.createElement("div");
    div.className = "question" + (q === active ? " active" : "");
    div.dataset.question = q;
    const p = document.createElement("p");
    p.textContent = `${q}. ${text}`;
    div.appendChild(p);
    for (const [value, label] of CHOICES) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.dataset.answer = value;
      if (answers[q] === value) b.classList.add("chosen");
      b.addEventListener("click", () => { answers[q] = value; renderQuestions(); });
      div.appendChild(b);
    }
    box.appendChild(div);
  }
  $("submit").disabled = active !== null || busy;
}

function render(state) {
  const pct = state.total ? Math.round(100 * state.done / state.total) : 100;
  $("progress-bar").style.width = pct + "%";
  questions = state.questions;
  if (!state.task) {
    $("progress-text").textContent = `Done: ${state.done} of ${state.total} tasks`;
    $("task").hidden = true; $("done").hidden = false; current = null;
    return;
  }
  $("progress-text").textContent = `Task ${state.done + 1} of ${state.total}`;
  current = state.task;
  answers = {};
  $("prompt").textContent = current.prompt;
  const refs = $("refs");
  refs.textContent = "";
  for (const url of current.refs) {
    const img = document.createElement("img");
    img.src = url; img.alt = "original image";
    refs.appendChild(img);
  }
  $("image1").src = current.images[0];
  $("image2").src = current.images[1];
  $("task").hidden = false; $("done").hidden = true;
  renderQuestions();
  window.scrollTo(0, 0);
}

async function call(path, options) {
  const resp = await fetch(`/api/${encodeURIComponent(token)}/${path}`, options);
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || `server answered ${resp.status}`);
  return body;
}

async function load() {
  try { showError(""); render(await call("state")); } catch (e) { showError(e.message); }
}

async function submit() {
  if (!current || activeQuestion() !== null || busy) return;
  busy = true; $("submit").disabled = true;
  try {
    render(await call("answer", {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify({task: current.id, answers})}));
    showError("");
  } catch (e) {
    showError(`Not saved: ${e.message}. Try again.`);
  } finally {
    busy = false; if (current) renderQuestions();
  }
}

document.addEventListener("keydown", (ev) => {
  if (!current || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const q = activeQuestion();
  const key = {"1": "1", "2": "2", "0": "none", "3": "none"}[ev.key];
  if (key && q !== null) { answers[q] = key; renderQuestions(); ev.preventDefault(); }
  else if (ev.key === "Backspace") {
    const given = Object.keys(questions).filter((k) => k in answers);
    if (given.length) { delete answers[given[given.length - 1]]; renderQuestions(); }
    ev.preventDefault();
  } else if (ev.key === "Enter") { submit(); ev.preventDefault(); }
});
$("submit").addEventListener("click", submit);
load();
