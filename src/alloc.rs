//! The process's allocator: mimalloc, asked for alignment only where a type needs more
//! than every mimalloc block has.
//!
//! mimalloc's aligned entry point takes its fast path only for blocks of at most 1 KiB;
//! a larger request (a request's state is one) goes through its generic aligned path and
//! costs several times a plain allocation, although any block is aligned enough for it.
//! Every block mimalloc hands out is aligned to at least a machine word (its own
//! `mi_realloc_aligned` relies on this: for an alignment of at most
//! `sizeof(uintptr_t)` it calls plain `mi_realloc`). So a layout whose alignment is at
//! most a word is served by the plain calls, and only the others by the aligned ones.

// The `GlobalAlloc` implementation below is the one place the binary needs `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every mimalloc block has, whatever its size.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, with plain calls for layouts that need no more than a word's alignment.
pub struct Allocator;

// SAFETY: each method keeps `GlobalAlloc`'s contract.
// - `alloc` and `alloc_zeroed` return null or a block of at least `layout.size()` bytes
//   (zeroed by `mi_zalloc*`) aligned to `layout.align()`: `mi_malloc`/`mi_zalloc` blocks
//   are word-aligned, which suffices when `layout.align() <= WORD`; otherwise the
//   `_aligned` calls are given the alignment. `layout.align()` is a power of two, as the
//   aligned calls require.
// - `dealloc` gets a pointer one of these calls returned (the caller's contract), and
//   `mi_free` frees a block from any of mimalloc's allocation calls.
// - `realloc` gets such a pointer with the layout it was allocated with, so the
//   alignment it needs is `layout.align()`: `mi_realloc` keeps the word alignment every
//   block has, and `mi_realloc_aligned` the one it is given. Both return null and leave
//   the block as it was when they cannot grow it, and otherwise return a block holding
//   the old contents up to the smaller size, as `GlobalAlloc::realloc` requires.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned, writable, zeroed
    /// when asked, and keeps its contents across growing and shrinking.
    #[test]
    fn blocks_are_aligned_and_keep_their_contents() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 9, 16, 24, 100, 1024, 1025, 2328, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with the layout it has.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    let grown = a.realloc(p, layout, size * 3);
                    assert!(!grown.is_null());
                    assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                    for i in 0..size {
                        assert_eq!(grown.add(i).read(), i as u8);
                    }
                    let shrunk = a.realloc(
                        grown,
                        Layout::from_size_align(size * 3, align).unwrap(),
                        size,
                    );
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size} align {align}");
                    for i in 0..size {
                        assert_eq!(shrunk.add(i).read(), i as u8);
                    }
                    a.dealloc(shrunk, layout);

                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed {size} align {align}");
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
