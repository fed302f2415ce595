// The network's two outward facts, apart from its definition: code that only runs a built model
// (the ONNX embedder, its thread) imports these without loading TF.js.

/** Side of the square RGB image the ImageNet weights were trained at. */
export const EFFICIENTNET_B0_INPUT_SIZE = 224;
/** Length of the embedding: `top_conv` filters, averaged over space by `avg_pool`. */
export const EFFICIENTNET_B0_EMBEDDING_DIM = 1280;
