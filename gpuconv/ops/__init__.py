"""Array kernels shared by layers: im2col/col2im, convolution, pooling."""
