/**
 * The label of an object listed under `prefix`: the first folder below the prefix, as in Keras
 * `image_dataset_from_directory` (`train/<label>/<file>`; deeper folders belong to that label).
 * Returns undefined for keys directly at the prefix root and for folder markers, which have no label.
 */
export function labelFromKey(prefix: string, key: string): string | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return undefined; // at the root, or an empty folder name ("//")
  if (rest.endsWith('/')) return undefined; // a folder marker object, not a file
  const label = rest.slice(0, slash).normalize('NFC');
  return label.trim() === '' ? undefined : label;
}
