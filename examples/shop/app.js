// The shop's services in one small file, picked by ZMESH_WORKLOAD. They are plain HTTP apps
// that know nothing about the mesh: they call each other by service name and trust the mesh
// for identity, encryption and authorization. Each logs every request it receives.
import { createServer } from "node:http";

const name = process.env.ZMESH_WORKLOAD ?? "app";
const port = Number(process.env.PORT ?? 8080);

async function call(method, url, body) {
  const res = await fetch(url, { method, body, headers: body ? { "content-type": "application/json" } : {} });
  return { status: res.status, body: await res.text() };
}

const routes = {
  frontend: {
    "GET /": async () => {
      const items = await call("GET", "http://catalog/items");
      const order = await call("POST", "http://orders/orders", JSON.stringify({ item: "tea", qty: 1 }));
      return [
        200,
        { shop: "open", catalog: items.status, order: order.status, orderBody: safeJson(order.body) },
      ];
    },
  },
  catalog: {
    "GET /items": async () => [200, { items: ["tea", "coffee", "cake"] }],
    "POST /items": async () => [201, { added: true }],
    "GET /admin": async () => [200, { secret: "catalog admin" }],
  },
  orders: {
    "POST /orders": async () => {
      const charge = await call("POST", "http://payments/charge", JSON.stringify({ amount: 3 }));
      return [charge.status === 200 ? 201 : 502, { order: "created", charge: charge.status }];
    },
    "GET /orders": async () => [200, { orders: [] }],
  },
  payments: {
    "POST /charge": async () => [200, { charged: true }],
    "GET /admin": async () => [200, { secret: "payments admin: refunds, card vault" }],
  },
};

function safeJson(t) {
  try {
    return JSON.parse(t);
  } catch {
    return t;
  }
}

createServer(async (req, res) => {
  const path = (req.url ?? "/").split("?")[0];
  console.log(
    JSON.stringify({
      app: name,
      method: req.method,
      path: req.url,
      xfcc: req.headers["x-forwarded-client-cert"] ?? null,
    }),
  );
  const handler = routes[name]?.[`${req.method} ${path}`];
  let status = 404;
  let body = { error: `no route ${req.method} ${path}` };
  if (handler) {
    try {
      [status, body] = await handler(req);
    } catch (e) {
      [status, body] = [502, { error: String(e.cause?.code ?? e.message) }];
    }
  }
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}).listen(port, "0.0.0.0", () => console.log(JSON.stringify({ app: name, listening: port })));
