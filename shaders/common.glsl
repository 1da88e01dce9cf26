// Shared helpers of the compute shaders. Row-per-workgroup kernels index rows over a 2-D grid because one grid
// dimension is limited to 65535 workgroups (maxComputeWorkGroupCount) and a vocabulary projection has more rows.
uint wg_row() { return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x; }

// Bit k of an LSB-first bit stream stored in 32-bit words (byte k/8, bit k%8; the words are little-endian).
uint stream_bit(uint word, uint k) { return (word >> (k & 31u)) & 1u; }

// Element i of an f16 array stored two per 32-bit word (element 2m in the low half).
#define F16_AT(buf, i) (unpackHalf2x16(buf[(i) >> 1])[(i) & 1u])

// Routing limits of the top-k selection (topk.glsl; the runner checks models against them).
const uint MOE_MAX_K = 32, MOE_MAX_E = 1024;
