// A kernel's second weight set (qweight.glsl's note): qweight.glsl again with its names renamed, bindings
// QW2_BINDING..+2 and spec constant ids 20..24. The including shader declares FORMAT2 and BITS2 and defines QW_X for
// this set's input before including this file; the set is read through qweight2() and qdot_binary_word2().
#undef QW_BINDING
#define QW_BINDING QW2_BINDING
#undef QW_SPEC
#define QW_SPEC 20
#define QW QW2_
#define QS QS2_
#define QZ QZ2_
#define qw qw2
#define qs qs2
#define qz qz2
#define VQ_DIM VQ_DIM2
#define VQ_SCALED VQ_SCALED2
#define BIN_SG BIN_SG2
#define BIN_MEAN BIN_MEAN2
#define BIN_COLS BIN_COLS2
#define FORMAT FORMAT2
#define BITS BITS2
#define qweight qweight2
#define qdot_binary_word qdot_binary_word2
#include "qweight.glsl"
#undef QW
#undef QS
#undef QZ
#undef qw
#undef qs
#undef qz
#undef VQ_DIM
#undef VQ_SCALED
#undef BIN_SG
#undef BIN_MEAN
#undef BIN_COLS
#undef FORMAT
#undef BITS
#undef qweight
#undef qdot_binary_word
