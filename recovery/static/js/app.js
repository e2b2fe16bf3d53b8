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
