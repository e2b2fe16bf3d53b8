// Small behaviours that need no framework. No inline script: the CSP forbids it.
document.addEventListener("click", (event) => {
  const toggle = event.target.closest("[data-nav-toggle]");
  if (toggle) {
    const nav = document.getElementById(toggle.getAttribute("aria-controls"));
    const open = toggle.getAttribute("aria-expanded") === "true";
    toggle.setAttribute("aria-expanded", String(!open));
    nav.classList.toggle("is-open", !open);
  }
  const dismiss = event.target.closest("[data-dismiss]");
  if (dismiss) dismiss.closest(".flash").remove();
});

// Submit the filter form when a select changes, keeping keyboard users in control.
document.addEventListener("change", (event) => {
  if (event.target.matches("[data-autosubmit]")) event.target.form.requestSubmit();
});

// Copy a value (e.g. a new API token) to the clipboard: data-copy="#id-of-input".
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.value ?? source.textContent;
  source.select?.();
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on a non-local host): the text is selected for Ctrl+C.
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 2000);
});

// Ask before a destructive form submits: <form data-confirm="Really?">.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset?.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Live regions ([data-live] with hx-trigger="every 3s") poll only while the tab is visible.
document.addEventListener("htmx:beforeRequest", (event) => {
  if (document.hidden && event.detail.elt.hasAttribute("data-live")) event.preventDefault();
});

// A poll answered by the sign-in page (the session ended): go there instead of swapping it in.
document.addEventListener("htmx:beforeSwap", (event) => {
  const url = event.detail.xhr?.responseURL;
  if (url && new URL(url).pathname === "/login") {
    event.detail.shouldSwap = false;
    const here = window.location.pathname + window.location.search;
    window.location.assign("/login?next=" + encodeURIComponent(here));
  }
});

// Bulk start on the transactions list: "select all on this page", "select all N matching this
// filter" (offered only while the whole page is selected), and the count on the button (and in
// the confirmation). The row checkboxes join the form through form="bulk-form".
function bulkBoxes(form) {
  return [...form.elements].filter((element) => element.name === "ids");
}

function bulkUpdate(form) {
  const boxes = bulkBoxes(form);
  const checked = boxes.filter((box) => box.checked).length;
  const wholePage = checked > 0 && checked === boxes.length;
  const all = form.querySelector("[data-select-all]");
  if (all) {
    all.checked = wholePage;
    all.indeterminate = checked > 0 && checked < boxes.length;
  }
  const scope = form.querySelector("[data-bulk-scope]");
  const everyMatch = form.querySelector("[data-bulk-filter]");
  if (scope) scope.hidden = !wholePage;
  // More rows match than the list counts: ask for the exact count (htmx, once) when it is offered.
  if (scope && wholePage) scope.dispatchEvent(new Event("bulk-scope-shown"));
  // Unticking a row means "not everything": the filter scope goes with it.
  if (everyMatch && !wholePage) everyMatch.checked = false;
  const label = form.querySelector("[data-bulk-label]");
  // Nothing ticked, nothing to start: a click would only ask, then refuse.
  const submit = form.querySelector("button[type=submit]");
  if (submit) submit.disabled = checked === 0;
  if (everyMatch?.checked) {
    const matching = everyMatch.dataset.bulkMatching;
    if (label) label.textContent = `Start recovery for all ${matching} matching`;
    form.dataset.confirm = `Start recoveries for all ${matching} transactions matching this filter? ${form.dataset.bulkWhen}`;
  } else {
    if (label) label.textContent = `Start recovery for ${checked} selected`;
    form.dataset.confirm = `Start recoveries for ${checked} transaction${checked === 1 ? "" : "s"}? ${form.dataset.bulkWhen}`;
  }
}

document.addEventListener("change", (event) => {
  const form = event.target.form;
  if (!form || !form.matches("[data-bulk]")) return;
  if (event.target.matches("[data-select-all]")) {
    for (const box of bulkBoxes(form)) box.checked = event.target.checked;
  }
  bulkUpdate(form);
});

// The exact count arrived: the choice and the confirmation name it.
document.addEventListener("htmx:afterSettle", (event) => {
  const form = event.detail.elt.closest?.("form[data-bulk]");
  if (form) bulkUpdate(form);
});

// Checkboxes the browser restored (back button) count too.
window.addEventListener("pageshow", () => document.querySelectorAll("form[data-bulk]").forEach(bulkUpdate));

// The rule form: a condition row shows the inputs of its type only (all of them without script).
function conditionRow(row) {
  const kind = row.querySelector("[data-cond-type]").value;
  for (const part of row.querySelectorAll("[data-for]")) part.hidden = !part.dataset.for.split(" ").includes(kind);
}
document.addEventListener("change", (event) => {
  const row = event.target.matches("[data-cond-type]") && event.target.closest("[data-cond-row]");
  if (row) conditionRow(row);
});
document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("[data-cond-row]").forEach(conditionRow));

// The rule form: the campaign is asked for when the rule starts one, the reason when it does not.
function ruleAction(select) {
  const form = select.form;
  const starts = select.value === "start_campaign";
  form.querySelector("#campaign_id")?.closest(".field")?.toggleAttribute("hidden", !starts);
  form.querySelector("#reason")?.closest(".field")?.toggleAttribute("hidden", starts);
}
document.addEventListener("change", (event) => {
  if (event.target.matches("[data-rule-action]")) ruleAction(event.target);
});
document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("[data-rule-action]").forEach(ruleAction));
