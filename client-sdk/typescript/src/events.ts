/** A minimal typed event list: `on` returns the function that removes the listener. A
 * listener that throws is reported to the console and does not stop the others. */
export class Listeners<T> {
  private readonly callbacks = new Set<(value: T) => void>();

  on(callback: (value: T) => void): () => void {
    this.callbacks.add(callback);
    return () => this.callbacks.delete(callback);
  }

  emit(value: T): void {
    for (const callback of [...this.callbacks]) {
      try {
        callback(value);
      } catch (error) {
        console.error("fieldsync: a listener failed", error);
      }
    }
  }

  clear(): void {
    this.callbacks.clear();
  }
}
