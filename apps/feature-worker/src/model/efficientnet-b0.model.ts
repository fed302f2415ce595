import * as tf from '@tensorflow/tfjs';
import { ChannelRescaling } from './channel-rescaling.layer.js';
import { KERNEL_GAIN, kernelInitializer, RESIDUAL_BRANCH_VARIANCE } from './efficientnet-b0.initializers.js';
import { IMAGENET_STD_RGB, Normalization } from './normalization.layer.js';
import { EFFICIENTNET_B0_EMBEDDING_DIM, EFFICIENTNET_B0_INPUT_SIZE } from './efficientnet-b0.constants.js';

export { EFFICIENTNET_B0_EMBEDDING_DIM, EFFICIENTNET_B0_INPUT_SIZE };
// Keras' documented minimum for EfficientNet; five stride-2 stages need at least this much.
const MIN_INPUT_SIZE = 32;

/** Options of {@link buildEfficientNetB0}. */
export interface EfficientNetB0Options {
  /**
   * Seed for the initial conv weights. Two builds with the same seed get bit-identical weights;
   * without one they are random. Irrelevant once real weights are loaded.
   */
  seed?: number;
  /**
   * Side of the square input (default 224). Any integer ≥ 32 works, as with Keras'
   * `include_top=False`, and the weight shapes do not depend on it; smaller sizes only make
   * tests cheaper.
   */
  inputSize?: number;
}

/** One stage of the B0 network (Tan & Le 2019, Table 1; Keras `DEFAULT_BLOCKS_ARGS`). */
interface StageSpec {
  kernel: 3 | 5;
  repeats: number;
  filtersIn: number;
  filtersOut: number;
  expandRatio: number;
  stride: 1 | 2;
}

const STAGES: readonly StageSpec[] = [
  { kernel: 3, repeats: 1, filtersIn: 32, filtersOut: 16, expandRatio: 1, stride: 1 },
  { kernel: 3, repeats: 2, filtersIn: 16, filtersOut: 24, expandRatio: 6, stride: 2 },
  { kernel: 5, repeats: 2, filtersIn: 24, filtersOut: 40, expandRatio: 6, stride: 2 },
  { kernel: 3, repeats: 3, filtersIn: 40, filtersOut: 80, expandRatio: 6, stride: 2 },
  { kernel: 5, repeats: 3, filtersIn: 80, filtersOut: 112, expandRatio: 6, stride: 1 },
  { kernel: 5, repeats: 4, filtersIn: 112, filtersOut: 192, expandRatio: 6, stride: 2 },
  { kernel: 3, repeats: 1, filtersIn: 192, filtersOut: 320, expandRatio: 6, stride: 1 },
];
const SE_RATIO = 0.25;
const DROP_CONNECT_RATE = 0.2;
const STEM_FILTERS = 32;
const BN_MOMENTUM = 0.99;
const BN_EPSILON = 1e-3;

/**
 * Builds EfficientNet-B0 as Keras' `EfficientNetB0(include_top=False, pooling="avg")` (Keras ≥ 2.9):
 * input `input_1` float32 [batch, size, size, 3] with values in [0, 255], output [batch, 1280].
 * Layer names, classes, order and weight shapes equal the Keras model, so Keras weights can be
 * loaded by name (see `loadKerasH5Weights`).
 *
 * Preprocessing lives inside the model, as in Keras: `rescaling` (1/255) → `normalization`
 * (subtract mean, divide by sqrt(variance)) → `rescaling_1` (1/sqrt(std)). The Keras weights file
 * stores std in `variance`, so the net effect is `(x/255 − mean) / std`.
 *
 * Initial weights: BatchNormalization identity (γ=1, β=0, mean 0, variance 1), zero biases,
 * ImageNet normalization, and seeded truncated-normal conv kernels scaled so that activations stay
 * near unit variance through all 16 blocks (see `KERNEL_GAIN`; deliberately not Keras' init).
 */
export function buildEfficientNetB0(options: EfficientNetB0Options = {}): tf.LayersModel {
  const inputSize = options.inputSize ?? EFFICIENTNET_B0_INPUT_SIZE;
  if (!Number.isInteger(inputSize) || inputSize < MIN_INPUT_SIZE) {
    throw new Error(`EfficientNet-B0 input size must be an integer ≥ ${MIN_INPUT_SIZE}, got ${inputSize}`);
  }
  const seed = options.seed;
  const input = tf.input({ shape: [inputSize, inputSize, 3], dtype: 'float32', name: 'input_1' });

  let x = apply(tf.layers.rescaling({ scale: 1 / 255, name: 'rescaling' }), input);
  x = apply(new Normalization({ name: 'normalization' }), x);
  x = apply(
    new ChannelRescaling({ scale: IMAGENET_STD_RGB.map((std) => 1 / Math.sqrt(std)), name: 'rescaling_1' }),
    x,
  );

  x = apply(tf.layers.zeroPadding2d({ padding: correctPad(3), name: 'stem_conv_pad' }), x);
  x = apply(
    conv2d({ seed, name: 'stem_conv', filters: STEM_FILTERS, kernel: 3, stride: 2, gain: KERNEL_GAIN.afterLinear }),
    x,
  );
  x = apply(batchNorm('stem_bn'), x);
  x = apply(swish('stem_activation'), x);

  const totalBlocks = STAGES.reduce((sum, stage) => sum + stage.repeats, 0);
  let blockIndex = 0;
  STAGES.forEach((stage, stageIndex) => {
    for (let repeat = 0; repeat < stage.repeats; repeat += 1) {
      const first = repeat === 0;
      x = mbConvBlock(x, {
        prefix: `block${stageIndex + 1}${String.fromCharCode(97 + repeat)}_`,
        kernel: stage.kernel,
        stride: first ? stage.stride : 1,
        filtersIn: first ? stage.filtersIn : stage.filtersOut,
        filtersOut: stage.filtersOut,
        expandRatio: stage.expandRatio,
        dropRate: (DROP_CONNECT_RATE * blockIndex) / totalBlocks,
        seed,
      });
      blockIndex += 1;
    }
  });

  x = apply(
    conv2d({ seed, name: 'top_conv', filters: EFFICIENTNET_B0_EMBEDDING_DIM, gain: KERNEL_GAIN.afterLinear }),
    x,
  );
  x = apply(batchNorm('top_bn'), x);
  x = apply(swish('top_activation'), x);
  const output = apply(tf.layers.globalAveragePooling2d({ name: 'avg_pool' }), x);

  return tf.model({ inputs: input, outputs: output, name: 'efficientnetb0' });
}

interface BlockSpec {
  prefix: string;
  kernel: 3 | 5;
  stride: 1 | 2;
  filtersIn: number;
  filtersOut: number;
  expandRatio: number;
  dropRate: number;
  seed: number | undefined;
}

/** Keras `efficientnet.block`: inverted residual (MBConv) with squeeze-and-excitation. */
function mbConvBlock(inputs: tf.SymbolicTensor, spec: BlockSpec): tf.SymbolicTensor {
  const { prefix: p, seed } = spec;
  const filters = spec.filtersIn * spec.expandRatio;
  let x = inputs;
  if (spec.expandRatio !== 1) {
    x = apply(conv2d({ seed, name: `${p}expand_conv`, filters, gain: KERNEL_GAIN.afterLinear }), x);
    x = apply(batchNorm(`${p}expand_bn`), x);
    x = apply(swish(`${p}expand_activation`), x);
  }

  // Stride-2 convs pad explicitly: TF 'same' would pad top/left differently from Keras' weights.
  if (spec.stride === 2) {
    x = apply(tf.layers.zeroPadding2d({ padding: correctPad(spec.kernel), name: `${p}dwconv_pad` }), x);
  }
  x = apply(
    tf.layers.depthwiseConv2d({
      kernelSize: spec.kernel,
      strides: spec.stride,
      padding: spec.stride === 2 ? 'valid' : 'same',
      depthMultiplier: 1,
      useBias: false,
      // A depthwise kernel [k, k, C, 1] has a true fan-in of k·k, which TF.js calls its fan-out.
      depthwiseInitializer: kernelInitializer(seed, `${p}dwconv`, KERNEL_GAIN.afterSwish, 'fanOut'),
      name: `${p}dwconv`,
    }),
    x,
  );
  x = apply(batchNorm(`${p}bn`), x);
  x = apply(swish(`${p}activation`), x);

  // Squeeze-excite is sized from the block's *input* width, not the expanded one.
  const filtersSe = Math.max(1, Math.floor(spec.filtersIn * SE_RATIO));
  let se = apply(tf.layers.globalAveragePooling2d({ name: `${p}se_squeeze` }), x);
  se = apply(tf.layers.reshape({ targetShape: [1, 1, filters], name: `${p}se_reshape` }), se);
  se = apply(
    conv2d({ seed, name: `${p}se_reduce`, filters: filtersSe, activation: 'swish', gain: KERNEL_GAIN.afterSwish }),
    se,
  );
  se = apply(
    conv2d({ seed, name: `${p}se_expand`, filters, activation: 'sigmoid', gain: KERNEL_GAIN.seGate }),
    se,
  );
  x = apply(tf.layers.multiply({ name: `${p}se_excite` }), [x, se]);

  const residual = spec.stride === 1 && spec.filtersIn === spec.filtersOut;
  const projectGain = KERNEL_GAIN.afterGatedSwish * (residual ? RESIDUAL_BRANCH_VARIANCE : 1);
  x = apply(
    conv2d({ seed, name: `${p}project_conv`, filters: spec.filtersOut, gain: projectGain }),
    x,
  );
  x = apply(batchNorm(`${p}project_bn`), x);

  if (residual) {
    if (spec.dropRate > 0) {
      // Stochastic depth: drop the whole residual branch per sample (Keras noise_shape
      // (None, 1, 1, 1); TF.js reads null as "the input's size"). Inactive at inference.
      const noiseShape = [null, 1, 1, 1] as unknown as number[];
      x = apply(tf.layers.dropout({ rate: spec.dropRate, noiseShape, name: `${p}drop` }), x);
    }
    x = apply(tf.layers.add({ name: `${p}add` }), [x, inputs]);
  }
  return x;
}

/**
 * Keras `imagenet_utils.correct_pad` for an input of unknown size, which is what
 * `include_top=False` builds: pad one less on the top/left than on the bottom/right.
 */
function correctPad(kernel: 3 | 5): [[number, number], [number, number]] {
  const half = Math.floor(kernel / 2);
  return [
    [half - 1, half],
    [half - 1, half],
  ];
}

interface Conv2dSpec {
  seed: number | undefined;
  name: string;
  filters: number;
  /** Default 1 (a pointwise conv). */
  kernel?: number;
  /** Default 1; stride 2 means the input was already padded with `correctPad`. */
  stride?: 1 | 2;
  /** Only the squeeze-excite convs have an activation, and a bias, in EfficientNet. */
  activation?: 'swish' | 'sigmoid';
  gain: number;
}

function conv2d(spec: Conv2dSpec): tf.layers.Layer {
  const stride = spec.stride ?? 1;
  return tf.layers.conv2d({
    filters: spec.filters,
    kernelSize: spec.kernel ?? 1,
    strides: stride,
    padding: stride === 2 ? 'valid' : 'same',
    useBias: spec.activation !== undefined,
    ...(spec.activation === undefined ? {} : { activation: spec.activation }),
    kernelInitializer: kernelInitializer(spec.seed, spec.name, spec.gain, 'fanIn'),
    name: spec.name,
  });
}

function batchNorm(name: string): tf.layers.Layer {
  return tf.layers.batchNormalization({ axis: 3, momentum: BN_MOMENTUM, epsilon: BN_EPSILON, name });
}

function swish(name: string): tf.layers.Layer {
  return tf.layers.activation({ activation: 'swish', name });
}

// Layer.apply returns a union type for the eager case; every call here is symbolic.
function apply(layer: tf.layers.Layer, inputs: tf.SymbolicTensor | tf.SymbolicTensor[]): tf.SymbolicTensor {
  return layer.apply(inputs) as tf.SymbolicTensor;
}
