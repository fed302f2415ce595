// onnx-proto is CommonJS whose `onnx` namespace Node's ESM loader cannot detect as a named export
// (`import { onnx } from 'onnx-proto'` fails at run time), so take it off the default export.
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type AttributeProto = onnxProto.onnx.IAttributeProto;
type NodeProto = onnxProto.onnx.INodeProto;
type TensorProto = onnxProto.onnx.ITensorProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;

/** An attribute value of a node: an int, a float, or a list of ints. */
export type OnnxAttribute = { ints: readonly number[] } | { int: number } | { float: number };

/** One dimension of a graph input or output: a fixed size or a symbolic name (e.g. the batch). */
export type OnnxDim = number | string;

/** A graph input or output. */
export interface OnnxValueInfo {
  name: string;
  elemType: 'float32' | 'uint8';
  dims: readonly OnnxDim[];
}

/** What {@link OnnxGraphBuilder.toModelBytes} writes into the ModelProto header. */
export interface OnnxModelInfo {
  graphName: string;
  input: OnnxValueInfo;
  output: OnnxValueInfo;
  opsetVersion: number;
  irVersion: number;
  producerName: string;
  producerVersion: string;
  docString?: string;
  /** key/value pairs in the model's metadata_props (what onnxruntime's modelmeta.custom_metadata_map returns) */
  metadata?: Readonly<Record<string, string>>;
}

const ELEM_TYPE = {
  float32: onnx.TensorProto.DataType.FLOAT,
  uint8: onnx.TensorProto.DataType.UINT8,
} as const;

/**
 * Collects ONNX nodes and float32 initializers in emission order and serialises them as a
 * ModelProto with protobufjs. Callers must add nodes in topological order (ONNX requires it)
 * and give every value a unique name; both are checked.
 */
export class OnnxGraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly names = new Set<string>();

  /** Adds a float32 constant; `values` are rounded from float64 here, once. */
  addInitializer(name: string, dims: readonly number[], values: ArrayLike<number>): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (values.length !== count) {
      throw new Error(`ONNX initializer '${name}': ${values.length} values for dims [${dims.join(', ')}]`);
    }
    this.claim(name);
    // raw_data is little-endian by the ONNX spec, whatever the host's byte order.
    const raw = new Uint8Array(count * 4);
    const view = new DataView(raw.buffer);
    for (let i = 0; i < count; i += 1) view.setFloat32(i * 4, values[i] ?? NaN, true);
    this.initializers.push({ name, dims: [...dims], dataType: ELEM_TYPE.float32, rawData: raw });
    return name;
  }

  /** Adds a node whose inputs were all produced earlier; returns its first output's name. */
  addNode(
    opType: string,
    name: string,
    inputs: readonly string[],
    outputs: readonly string[],
    attributes: Readonly<Record<string, OnnxAttribute>> = {},
  ): string {
    for (const input of inputs) {
      if (!this.names.has(input)) throw new Error(`ONNX node '${name}' (${opType}) reads '${input}' before it exists`);
    }
    outputs.forEach((output) => this.claim(output));
    this.nodes.push({
      opType,
      name,
      input: [...inputs],
      output: [...outputs],
      attribute: Object.entries(attributes).map(([key, value]) => toAttribute(key, value)),
    });
    const first = outputs[0];
    if (first === undefined) throw new Error(`ONNX node '${name}' has no output`);
    return first;
  }

  /** Declares the graph input so nodes can read it. */
  declareInput(name: string): void {
    this.claim(name);
  }

  /** Serialises the collected graph. */
  toModelBytes(info: OnnxModelInfo): Uint8Array {
    if (!this.names.has(info.output.name)) throw new Error(`ONNX graph output '${info.output.name}' is never produced`);
    const model = onnx.ModelProto.create({
      irVersion: info.irVersion,
      opsetImport: [{ domain: '', version: info.opsetVersion }],
      producerName: info.producerName,
      producerVersion: info.producerVersion,
      docString: info.docString ?? '',
      metadataProps: Object.entries(info.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: info.graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: [toValueInfo(info.input)],
        output: [toValueInfo(info.output)],
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }

  private claim(name: string): void {
    if (this.names.has(name)) throw new Error(`ONNX value name '${name}' is used twice`);
    this.names.add(name);
  }
}

function toAttribute(name: string, value: OnnxAttribute): AttributeProto {
  const { AttributeType } = onnx.AttributeProto;
  if ('ints' in value) return { name, type: AttributeType.INTS, ints: [...value.ints] };
  if ('int' in value) return { name, type: AttributeType.INT, i: value.int };
  return { name, type: AttributeType.FLOAT, f: value.float };
}

function toValueInfo(info: OnnxValueInfo): ValueInfoProto {
  return {
    name: info.name,
    type: {
      tensorType: {
        elemType: ELEM_TYPE[info.elemType],
        shape: { dim: info.dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}
