import { defineConfig } from "vite";

// The Python app (`cityops serve` / `cityops demo`) serves the build output with StaticFiles at
// "/", so every asset path is relative (`base: './'`) and the page works under any mount point.
// `npm run dev` proxies the APIs to a running app; CITYOPS_API sets where it listens.
const api = process.env.CITYOPS_API ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "./",
  build: {
    outDir: "../src/cityops/web/static",
    emptyOutDir: true,
    target: "es2022",
    // maplibre-gl alone is ~1 MB minified; one chunk for it is expected, not a warning.
    chunkSizeWarningLimit: 1500,
    rolldownOptions: {
      output: {
        // The MapLibre worker ships as .mjs; Python's mimetypes only maps .mjs to JavaScript
        // where /etc/mime.types says so, and a module worker served as octet-stream is refused.
        assetFileNames: (asset) =>
          asset.names.some((name) => name.endsWith(".mjs"))
            ? "assets/[name]-[hash].js"
            : "assets/[name]-[hash][extname]",
      },
    },
  },
  server: {
    proxy: {
      "/api": api,
      "/ogcapi": api,
    },
  },
});
