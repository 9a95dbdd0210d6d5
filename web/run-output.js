// A run's output box: tokens are written to the page once per frame, and the
// box follows the end of the text until the reader scrolls up (and again once
// they are back at the end).

export class RunOutput {
  /** `element`: the box the text goes in. */
  constructor(element) {
    this.element = element;
    this.textNode = document.createTextNode('');
    element.append(this.textNode);
    this.pending = '';
    this.flushQueued = false;
    this.stick = true;
    element.addEventListener('scroll', () => {
      this.stick = element.scrollTop + element.clientHeight >= element.scrollHeight - 8;
    });
  }

  append(text) {
    this.pending += text;
    if (!this.flushQueued) {
      this.flushQueued = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  /** Writes what is pending now, not at the next frame. */
  flush() {
    this.flushQueued = false;
    if (!this.pending) return;
    this.textNode.appendData(this.pending);
    this.pending = '';
    this.scrollIfStuck();
  }

  /** Replaces all the text, e.g. with a finished run's snapshot. */
  replace(text) {
    this.flush();
    this.textNode.data = text;
    this.scrollIfStuck();
  }

  scrollIfStuck() {
    if (this.stick) this.element.scrollTop = this.element.scrollHeight;
  }
}
