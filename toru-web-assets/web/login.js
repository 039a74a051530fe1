// The login page: sends the admin secret, then goes back to the dashboard.

import { api } from "./api.js";

const form = document.getElementById("login-form");
const input = document.getElementById("secret");
const error = document.getElementById("login-error");
const submit = document.getElementById("login-submit");

/** Where to go after signing in: the view the user came from, when it is one of ours. */
function destination() {
  const next = new URLSearchParams(location.search).get("next") ?? "";
  return /^#\/[\w\-./%]*$/.test(next) ? `/${next}` : "/";
}

function showError(message) {
  error.textContent = message;
  error.hidden = false;
  input.setAttribute("aria-invalid", "true");
  input.select();
  input.focus();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const secret = input.value.trim();
  if (!secret) {
    showError("Enter the admin secret.");
    return;
  }
  submit.disabled = true;
  submit.textContent = "Signing in…";
  error.hidden = true;
  try {
    await api.login(secret);
    location.replace(destination());
  } catch (err) {
    if (err.code === "wrong_secret" || err.status === 401) {
      showError("That is not the admin secret. Check it and try again.");
    } else if (err.code === "too_many_attempts" || err.status === 429) {
      const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : " Try again later.";
      showError(`Too many attempts.${wait}`);
    } else {
      showError(`Signing in failed: ${err.message}`);
    }
  } finally {
    submit.disabled = false;
    submit.textContent = "Sign in";
  }
});

input.addEventListener("input", () => {
  input.removeAttribute("aria-invalid");
});

// Already signed in (e.g. the back button): straight to the dashboard.
api.session().then(
  (session) => {
    if (session?.authenticated) location.replace(destination());
  },
  () => {},
);
