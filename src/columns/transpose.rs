//! Columns to rows: the transpose that turns a batch's feature columns into a row-major tensor.
//!
//! On the bundled MLP's 64 columns, a value-by-value transpose took a third of `predict_arrow`'s
//! time at 100,000 rows (perf), more than the model's matrix products: every value is a store
//! to another cache line. Four-byte values (FP32, INT32, UINT32) are moved here as 8 × 8 tiles in
//! AVX registers instead: eight loads of eight values from eight columns, a register transpose,
//! eight stores of eight values into eight rows. That took a 100,000 × 64 batch from about 10 to
//! about 5 ms on this 2-core machine; a plain copy of the same bytes takes 2 ms. Tiles move
//! bits without arithmetic, so every value, NaN payloads included, arrives unchanged. Other types
//! and hosts without AVX take the value-by-value path.

use std::ops::Range;

use arrow::buffer::Buffer;
use arrow::datatypes::{ArrowNativeType, ToByteSlice};

/// Rows per block: each block reads a run of every column while its rows are written. Longer
/// runs read faster until the block leaves L2; measured from 16 to 1,024 rows at 64 columns.
const BLOCK: usize = 1024;

/// The values of `columns` row after row: column `j` of row `i` at `i * columns.len() + j`.
/// Every column holds `rows` values, as the columns of one record batch do.
pub(super) fn rows_of<T: ArrowNativeType>(columns: &[&[T]], rows: usize) -> Buffer {
    if size_of::<T>() == 4 {
        let words: Option<Vec<&[u32]>> = columns
            .iter()
            .map(|c| bytemuck::try_cast_slice(c.to_byte_slice()).ok())
            .collect();
        if let Some(words) = words {
            let mut out = vec![0u32; rows * columns.len()];
            tiles::run(&words, rows, &mut out);
            return Buffer::from_vec(out);
        }
    }
    let mut out = vec![T::default(); rows * columns.len()];
    by_value(columns, Place::whole(columns), 0..rows, &mut out);
    Buffer::from_vec(out)
}

/// Where [`by_value`] writes its columns: at `first` of rows of `k` values.
#[derive(Clone, Copy)]
struct Place {
    k: usize,
    first: usize,
}

impl Place {
    fn whole<T>(columns: &[T]) -> Place {
        Place {
            k: columns.len(),
            first: 0,
        }
    }
}

/// `rows` of `columns` into `out`, one value at a time, in blocks of rows so that the rows
/// being written stay in cache while every column visits them.
fn by_value<T: Copy>(columns: &[&[T]], at: Place, rows: Range<usize>, out: &mut [T]) {
    let k = at.k;
    for start in rows.clone().step_by(BLOCK) {
        let end = (start + BLOCK).min(rows.end);
        let block = &mut out[start * k..end * k];
        for (j, column) in columns.iter().enumerate() {
            let slots = block[at.first + j..].iter_mut().step_by(k);
            slots
                .zip(&column[start..end])
                .for_each(|(slot, v)| *slot = *v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::x86_64::*;

    use bytemuck::cast;

    use super::{BLOCK, Place, by_value};

    /// Values a tile side: one AVX register of four-byte values.
    const SIDE: usize = 8;

    /// [`super::rows_of`] for four-byte values, into `out`.
    pub(super) fn run(columns: &[&[u32]], rows: usize, out: &mut [u32]) {
        if !is_x86_feature_detected!("avx") {
            by_value(columns, Place::whole(columns), 0..rows, out);
            return;
        }
        // SAFETY: the one requirement of calling a target_feature function is that the CPU has
        // the features, checked just above. The function itself is safe code.
        #[allow(unsafe_code)]
        unsafe {
            all_tiles(columns, rows, out)
        };
    }

    /// Whole tiles block by block; the rows and columns past the last whole tile value by
    /// value.
    #[target_feature(enable = "avx")]
    fn all_tiles(columns: &[&[u32]], rows: usize, out: &mut [u32]) {
        let k = columns.len();
        let tiled_rows = rows - rows % SIDE;
        let tiled_cols = k - k % SIDE;
        for start in (0..tiled_rows).step_by(BLOCK) {
            let end = (start + BLOCK).min(tiled_rows);
            for (group, j0) in columns[..tiled_cols]
                .chunks_exact(SIDE)
                .zip((0..).step_by(SIDE))
            {
                for i0 in (start..end).step_by(SIDE) {
                    tile(group, i0, &mut out[i0 * k + j0..], k);
                }
            }
            let rest = Place {
                k,
                first: tiled_cols,
            };
            by_value(&columns[tiled_cols..], rest, start..end, out);
        }
        by_value(columns, Place::whole(columns), tiled_rows..rows, out);
    }

    /// Rows `i0..i0 + 8` of the eight columns `group` into eight rows of `out`, `k` apart.
    /// [`all_tiles`] passes only whole tiles, so every read and write below is in bounds.
    #[target_feature(enable = "avx")]
    #[inline]
    fn tile(group: &[&[u32]], i0: usize, out: &mut [u32], k: usize) {
        let r: [__m256; SIDE] = std::array::from_fn(|j| {
            cast(
                group[j]
                    .get(i0..)
                    .and_then(|c| c.first_chunk::<SIDE>())
                    .copied()
                    .unwrap_or_default(),
            )
        });
        // Pairs, then quads, then halves: the usual three rounds of an 8 × 8 transpose.
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let rows = [
            _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
            _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
            _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
            _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
            _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
        ];
        for (i, row) in rows.into_iter().enumerate() {
            if let Some(to) = out
                .get_mut(i * k..)
                .and_then(|o| o.first_chunk_mut::<SIDE>())
            {
                *to = cast(row);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    use super::{Place, by_value};

    /// No tiles here: value by value.
    pub(super) fn run(columns: &[&[u32]], rows: usize, out: &mut [u32]) {
        by_value(columns, Place::whole(columns), 0..rows, out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every value distinct, NaN payloads among them, so that a misplaced or altered value
    /// shows.
    fn columns(rows: usize, k: usize) -> Vec<Vec<u32>> {
        (0..k)
            .map(|j| {
                (0..rows)
                    .map(|i| match (i + j) % 5 {
                        0 => 0x7fc0_0000 | (i * 64 + j) as u32,
                        _ => (i * 1000 + j) as u32,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn tiles_place_every_value_as_the_plain_transpose_does() {
        for rows in [0, 1, 7, 8, 9, 63, 1023, 1024, 1025, 2061] {
            for k in [1, 3, 8, 9, 16, 17, 64, 70] {
                let owned = columns(rows, k);
                let columns: Vec<&[u32]> = owned.iter().map(|c| &c[..]).collect();
                let expected: Vec<u32> = (0..rows)
                    .flat_map(|i| owned.iter().map(move |c| c[i]))
                    .collect();
                let mut by_values = vec![0; rows * k];
                by_value(&columns, Place::whole(&columns), 0..rows, &mut by_values);
                assert_eq!(by_values, expected, "{rows} x {k}, value by value");
                let mut tiled = vec![0; rows * k];
                tiles::run(&columns, rows, &mut tiled);
                assert_eq!(tiled, expected, "{rows} x {k}, tiles");
                let floats: Vec<&[f32]> = columns.iter().map(|c| bytemuck::cast_slice(c)).collect();
                let buffer = rows_of(&floats, rows);
                assert_eq!(buffer.typed_data::<u32>(), &expected[..], "{rows} x {k}");
            }
        }
    }
}
