// The sign-in dialog. When the API answers 401, the page asks for a key once
// (every request waiting on it shares the one dialog), trades it for the
// session cookie with POST /api/session, and the requests are tried again. The
// key itself is never stored by the page; EventSource sends the cookie by itself.

import { startSession } from './api.js';

export class SignIn {
  /** `dialog` and its parts: the `form`, the key's `input`, the `error` line. */
  constructor({ dialog, form, input, error }) {
    Object.assign(this, { dialog, form, input, error });
    this.pending = null;
  }

  /** Resolves once the visitor has signed in; every caller shares one dialog. */
  ask() {
    if (this.pending) return this.pending;
    const { dialog, form, input, error } = this;
    this.pending = new Promise((resolve) => {
      const submit = async (event) => {
        event.preventDefault();
        error.hidden = true;
        const response = await startSession(input.value.trim());
        if (response.ok) {
          form.removeEventListener('submit', submit);
          input.value = '';
          dialog.close();
          this.pending = null;
          resolve();
        } else {
          error.textContent = response.status === 401 ? 'That key is not valid.' : `Sign-in failed (${response.status}).`;
          error.hidden = false;
          input.select();
        }
      };
      form.addEventListener('submit', submit);
      dialog.addEventListener('cancel', (e) => e.preventDefault());
      dialog.showModal();
      input.focus();
    });
    return this.pending;
  }
}
