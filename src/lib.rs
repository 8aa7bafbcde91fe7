//! The OrderManagement contract, generated from `proto/order_management.proto` by the root
//! `build.rs`.
//!
//! This crate is the single owner of the generated code: the server (`server/`, with the `server`
//! feature) and the browser client (`web-client/`, built for wasm32) both use these types, so
//! there is exactly one definition of every message. The client half has no transport of its own:
//! give it a tonic `Channel` natively or a `tonic_web_wasm_client::Client` in the browser.

/// Messages and the client (and, with the `server` feature, the server) of `OrderManagement`.
///
/// The proto has no `package` line, so everything lives at the root of the generated module and
/// the wire path of `getOrder` is `/OrderManagement/getOrder`, as in the original tutorial.
#[allow(missing_docs, non_camel_case_types, clippy::all)]
pub mod pb {
    tonic::include_proto!("_");
    #[cfg(feature = "serde")]
    include!(concat!(env!("OUT_DIR"), "/order_management.serde.rs"));
}

/// The encoded `FileDescriptorSet` of the proto (with its imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/order_management_descriptor.bin"));

/// The codec every generated method uses: prost's, with smaller buffers.
///
/// tonic decodes each call's request, and encodes its answer, in buffers that start at 8 KiB and
/// grow as a message needs. This service's messages are a few hundred bytes (an order with a
/// handful of items), so two 8 KiB blocks a call were almost all empty, and worse: blocks that
/// large share few to an allocator page, so when one call frees its two, the page can empty and
/// go back, and the next call has to fetch a new one. Under HTTP/1.1 load that was half of all
/// calls. At 1 KiB the blocks come from the allocator's small-object pages, and a larger message
/// still grows its buffer as it would from 8 KiB.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// Where a buffer starts: room for a message of this service, a small-object allocation.
    pub const BUFFER_SIZE: usize = 1024;
    /// tonic's own: how much a stream encodes before it lets other tasks run.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// [`ProstCodec`] with buffers of [`BUFFER_SIZE`]; the generated code names it
    /// (`codec_path` in `build.rs`).
    pub struct OrderCodec<T, U>(PhantomData<fn(T) -> U>);

    impl<T, U> Default for OrderCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for OrderCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> ProstEncoder<T> {
            ProstCodec::<T, U>::raw_encoder(settings())
        }

        fn decoder(&mut self) -> ProstDecoder<U> {
            ProstCodec::<T, U>::raw_decoder(settings())
        }
    }

    fn settings() -> BufferSettings {
        BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
    }
}
