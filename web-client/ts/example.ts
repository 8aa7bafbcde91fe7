// Checked by `tsc --noEmit` in `make test` (test-types): the web client's TypeScript surface,
// used the way a page would. Each `@ts-expect-error` line fails the check if the types around it
// ever become `any`.
import init, {
  OrderClient,
  type CombinedShipment,
  type FieldViolation,
  type Order,
  type OrderError,
  type OrderInput,
} from "../../static/pkg/order_web_client.js";

export async function example(file: File): Promise<void> {
  await init();
  const client = new OrderClient("https://127.0.0.1:50051", 10_000, "a token");
  client.setToken(null);

  const order: Order = await client.getOrder("106");
  const total: number = order.price * order.items.length;
  // @ts-expect-error getOrder takes an ID string
  await client.getOrder(106);
  // @ts-expect-error an Order has no `quantity`
  order.quantity;

  const input: OrderInput = { items: ["Pixel 9"], price: 499, destination: "Seattle, WA" };
  const id: string = await client.addOrder(input);
  // The same key again: the first answer, never a second order.
  const again: string = await client.addOrder(input, "7c4a8d09-ca37-4f0e-9a3b-1d2e3f4a5b6c");
  // @ts-expect-error the key is a string
  await client.addOrder(input, 42);
  // @ts-expect-error price is a number
  await client.addOrder({ items: ["x"], price: "1", destination: "y" });

  const found: number = await client.searchOrders("google", (o: Order) => console.log(o.id));
  // A search the page may abandon: aborting cancels the call, and the promise rejects.
  const stop = new AbortController();
  const some: number = await client.searchOrders("google", (o: Order) => stop.abort(), stop.signal);
  // @ts-expect-error a signal, not a boolean
  await client.searchOrders("google", (o: Order) => {}, true);

  // Client streaming from an array, a generator or an async generator (streamed over https).
  const streamed: boolean = client.streamsUploads;
  // Why not, when not: the page's protocol, or this browser.
  const because: string | undefined = client.unstreamedBecause;
  const updated: string = await client.updateOrders([{ ...order, price: total }]);
  async function* rows(): AsyncGenerator<OrderInput> {
    const lines = file.stream().pipeThrough(new TextDecoderStream());
    for await (const chunk of lines) {
      for (const line of chunk.split("\n").filter(Boolean)) {
        yield JSON.parse(line) as OrderInput;
      }
    }
  }
  const added: string = await client.addOrders(rows());

  // Bidirectional: IDs up, shipments down.
  const shipped: number = await client.processOrders(["102", "103"], (s: CombinedShipment) => {
    const ids: string[] = s.ordersList.map((o) => o.id);
    console.log(s.id, s.status, ids);
  });
  // @ts-expect-error the IDs are strings
  await client.processOrders([102], () => {});

  try {
    await client.addOrders(rows());
  } catch (e) {
    const error = e as OrderError;
    const violations: FieldViolation[] = error.fieldViolations ?? [];
    const where: string[] = violations.map((v) => `${v.field}: ${v.description}`);
    if (error.codeName === "InvalidArgument" || error.code === 3) console.log(where);
    // @ts-expect-error not a gRPC code name
    if (error.codeName === "Missing") console.log(error.message);
  }
  console.log(id, again, found, streamed, updated, added, shipped);
}
