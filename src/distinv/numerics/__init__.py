"""Numerics: conjugate gradient and power iteration, least squares (closed form for circulant stacks), PSNR and SSIM;
each works on replicated tensors and on sharded row bands alike."""
