import h5wasm from 'h5wasm';

/** An open HDF5 file or group, as h5wasm exposes it. */
export type Hdf5Group = InstanceType<typeof h5wasm.Group>;
/** A dataset inside an open HDF5 file. */
export type Hdf5Dataset = InstanceType<typeof h5wasm.Dataset>;
/** What h5wasm decodes an attribute or dataset into. */
export type Hdf5Value = ReturnType<Hdf5Dataset['_value_getter']>;

// Every HDF5 file starts its superblock with this signature, at offset 0 or 512·2^n.
const HDF5_SIGNATURE = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a];

let fileCounter = 0;

/**
 * Whether `bytes` carries the HDF5 signature where the format allows a superblock to start.
 * Checked before handing bytes to h5wasm, whose open of a non-HDF5 file does not throw.
 */
export function hasHdf5Signature(bytes: Uint8Array): boolean {
  for (let offset = 0; offset + HDF5_SIGNATURE.length <= bytes.length; offset = offset === 0 ? 512 : offset * 2) {
    if (HDF5_SIGNATURE.every((byte, i) => bytes[offset + i] === byte)) return true;
  }
  return false;
}

/**
 * Opens `bytes` read-only as an HDF5 file and runs `read` on its root. The bytes live in h5wasm's
 * in-memory filesystem only while `read` runs; nothing touches the disk.
 *
 * @throws Error with HDF5's own reason (e.g. "truncated file: eof = …") if the file cannot be opened.
 */
export async function readHdf5Bytes<T>(bytes: Uint8Array, read: (root: Hdf5Group) => T): Promise<T> {
  const module = await h5wasm.ready;
  const path = nextPath();
  module.FS.writeFile(path, bytes);
  let file: InstanceType<typeof h5wasm.File> | undefined;
  try {
    file = openQuietly(module, path);
    return read(file);
  } finally {
    file?.close();
    module.FS.unlink(path);
  }
}

/**
 * Creates an empty HDF5 file in memory, lets `write` fill it, and returns the file's bytes.
 */
export async function writeHdf5Bytes(write: (root: Hdf5Group) => void): Promise<Uint8Array> {
  const module = await h5wasm.ready;
  const path = nextPath();
  try {
    const file = new h5wasm.File(path, 'w');
    try {
      write(file);
    } finally {
      file.close();
    }
    return module.FS.readFile(path);
  } finally {
    if (module.FS.analyzePath(path).exists) module.FS.unlink(path);
  }
}

/** The group `name` below `parent`, created if absent. */
export function getOrCreateGroup(parent: Hdf5Group, name: string): Hdf5Group {
  const existing = parent.get(name);
  if (existing instanceof h5wasm.Group) return existing;
  if (existing !== null) throw new Error(`${parent.path}/${name} exists and is not a group`);
  return parent.create_group(name);
}

/** `entity` as a group, or null if it is anything else (or missing). */
export function asGroup(entity: unknown): Hdf5Group | null {
  return entity instanceof h5wasm.Group ? entity : null;
}

/** `entity` as a dataset, or null if it is anything else (or missing). */
export function asDataset(entity: unknown): Hdf5Dataset | null {
  return entity instanceof h5wasm.Dataset ? entity : null;
}

/** The last line of an HDF5 error stack that says what went wrong, or the message itself. */
export function hdf5ErrorReason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const reasons = [...message.matchAll(/#\d+: .* in [\w:]+\(\): (.+)$/gm)].map((match) => match[1]);
  return reasons.at(-1) ?? message.split('\n')[0] ?? message;
}

function nextPath(): string {
  fileCounter += 1;
  return `/transferline-${fileCounter}.h5`;
}

type H5Module = Awaited<typeof h5wasm.ready>;

// By default h5wasm prints HDF5's error stack to stderr and hands back file_id -1; with the
// throwing handler the stack becomes the Error message instead. The handler is process-global
// state in the wasm module, so it is switched on only around the open.
function openQuietly(module: H5Module, path: string): InstanceType<typeof h5wasm.File> {
  module.activate_throwing_error_handler();
  try {
    const file = new h5wasm.File(path, 'r');
    if (file.file_id < 0n) throw new Error('H5Fopen returned an invalid file id');
    return file;
  } finally {
    module.deactivate_throwing_error_handler();
  }
}
