// As PROTEA's apps/web/next.config.ts: a standalone build, and the browser's /api-proxy/* rewritten to the
// API. Next resolves rewrites at `next build`, so PROTEA_API_URL must be set when the frontend is built.
const apiUrl = process.env.PROTEA_API_URL || "http://127.0.0.1:8000";

export default {
  output: "standalone",
  trailingSlash: true,
  async rewrites() {
    return [{ source: "/api-proxy/:path*", destination: `${apiUrl}/:path*` }];
  },
};
