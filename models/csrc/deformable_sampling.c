/* Multi-scale deformable sampling on the CPU, forward and backward, fused.

   What transformers' multi_scale_deformable_attention computes with grid_sample, a stack, a broadcast
   product and a sum, in one pass per (batch, head) over rows of D contiguous floats: a sample's four
   corners are four reads of D floats (ATen's grid_sample reads them D planes apart), and nothing the size
   of heads x D x queries x levels x points is written.

   Layouts (row-major, float32):
     value      [B, S, H, D]        S = sum of the levels' h * w, level l starting at row starts[l]
     shapes     [L, 2]  int64       (h, w) of each level
     locations  [B, Q, H, L, P, 2]  (x, y) in [0, 1], as Deformable DETR's sampling locations
     weights    [B, Q, H, L, P]     attention weights
     out        [B, Q, H, D]

   Bilinear sampling as grid_sample(align_corners=False, padding_mode="zeros"): the pixel coordinate is
   (2 * loc - 1 + 1) * size / 2 - 1/2, corners outside the map read zero. A sample's value is the
   corners' weighted sum, then times its attention weight, added to the output in (level, point) order.

   Every (batch, head) pair is one task, computed start to end by one thread in a fixed order, so the
   result does not depend on the thread count. No fast-math and no FMA contraction (built with
   -ffp-contract=off): every x86-64 machine computes the same bits. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEAD_DIM 1024

typedef struct {
    int64_t row[4]; /* rows of the level's value map (nw, ne, sw, se), -1 where the corner is outside */
    float w[4];     /* bilinear weights */
    float dx[4];    /* d w / d x (pixel units) */
    float dy[4];    /* d w / d y */
} Corners;

static void corners(float loc_x, float loc_y, int64_t height, int64_t width, Corners *c) {
    float gx = 2.0f * loc_x - 1.0f, gy = 2.0f * loc_y - 1.0f;
    float ix = (gx + 1.0f) * (0.5f * (float)width) - 0.5f;
    float iy = (gy + 1.0f) * (0.5f * (float)height) - 0.5f;
    float x0 = floorf(ix), y0 = floorf(iy), x1 = x0 + 1.0f, y1 = y0 + 1.0f;
    float east = ix - x0, west = x1 - ix, south = iy - y0, north = y1 - iy;
    c->w[0] = west * north;
    c->w[1] = east * north;
    c->w[2] = west * south;
    c->w[3] = east * south;
    c->dx[0] = -north;
    c->dx[1] = north;
    c->dx[2] = -south;
    c->dx[3] = south;
    c->dy[0] = -west;
    c->dy[1] = -east;
    c->dy[2] = west;
    c->dy[3] = east;
    const float xs[4] = {x0, x1, x0, x1}, ys[4] = {y0, y0, y1, y1};
    for (int k = 0; k < 4; ++k) {
        int inside = xs[k] >= 0.0f && xs[k] <= (float)(width - 1) && ys[k] >= 0.0f && ys[k] <= (float)(height - 1);
        c->row[k] = inside ? (int64_t)ys[k] * width + (int64_t)xs[k] : -1;
    }
}

void deformable_sampling_forward(const float *value, const int64_t *shapes, const int64_t *starts,
                                 const float *locations, const float *weights, float *out, int64_t B,
                                 int64_t S, int64_t H, int64_t D, int64_t Q, int64_t L, int64_t P,
                                 int64_t task_begin, int64_t task_end) {
    float sample[MAX_HEAD_DIM];
    for (int64_t task = task_begin; task < task_end; ++task) {
        int64_t b = task / H, h = task % H;
        for (int64_t q = 0; q < Q; ++q) {
            int64_t bqh = (b * Q + q) * H + h;
            float *o = out + bqh * D;
            memset(o, 0, (size_t)D * sizeof(float));
            for (int64_t l = 0; l < L; ++l) {
                const float *level = value + ((b * S + starts[l]) * H + h) * D; /* row r at level + r*H*D */
                for (int64_t p = 0; p < P; ++p) {
                    int64_t i = (bqh * L + l) * P + p;
                    Corners c;
                    corners(locations[2 * i], locations[2 * i + 1], shapes[2 * l], shapes[2 * l + 1], &c);
                    memset(sample, 0, (size_t)D * sizeof(float));
                    for (int k = 0; k < 4; ++k) {
                        if (c.row[k] < 0) continue;
                        const float *v = level + c.row[k] * H * D;
                        float w = c.w[k];
                        for (int64_t d = 0; d < D; ++d) sample[d] += v[d] * w;
                    }
                    float a = weights[i];
                    for (int64_t d = 0; d < D; ++d) o[d] += sample[d] * a;
                }
            }
        }
    }
}

/* grad_value must be zero on entry; grad_locations and grad_weights are written whole. */
void deformable_sampling_backward(const float *value, const int64_t *shapes, const int64_t *starts,
                                  const float *locations, const float *weights, const float *grad_out,
                                  float *grad_value, float *grad_locations, float *grad_weights, int64_t B,
                                  int64_t S, int64_t H, int64_t D, int64_t Q, int64_t L, int64_t P,
                                  int64_t task_begin, int64_t task_end) {
    for (int64_t task = task_begin; task < task_end; ++task) {
        int64_t b = task / H, h = task % H;
        for (int64_t q = 0; q < Q; ++q) {
            int64_t bqh = (b * Q + q) * H + h;
            const float *g = grad_out + bqh * D;
            for (int64_t l = 0; l < L; ++l) {
                int64_t offset = ((b * S + starts[l]) * H + h) * D;
                const float *level = value + offset;
                float *grad_level = grad_value + offset;
                int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
                for (int64_t p = 0; p < P; ++p) {
                    int64_t i = (bqh * L + l) * P + p;
                    Corners c;
                    corners(locations[2 * i], locations[2 * i + 1], height, width, &c);
                    float a = weights[i], grad_a = 0.0f, grad_x = 0.0f, grad_y = 0.0f;
                    for (int k = 0; k < 4; ++k) {
                        if (c.row[k] < 0) continue;
                        const float *v = level + c.row[k] * H * D;
                        float *gv = grad_level + c.row[k] * H * D;
                        float scale = a * c.w[k], dot = 0.0f;
                        for (int64_t d = 0; d < D; ++d) {
                            dot += g[d] * v[d];
                            gv[d] += g[d] * scale;
                        }
                        grad_a += c.w[k] * dot;
                        grad_x += c.dx[k] * dot;
                        grad_y += c.dy[k] * dot;
                    }
                    grad_weights[i] = grad_a;
                    /* pixel x = (2 loc - 1 + 1) * w / 2 - 1/2, so d x / d loc = w */
                    grad_locations[2 * i] = grad_x * a * (float)width;
                    grad_locations[2 * i + 1] = grad_y * a * (float)height;
                }
            }
        }
    }
}
