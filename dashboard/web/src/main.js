import 'uplot/dist/uPlot.min.css';
import './app.css';
import { pageData, localizeTimes, tzButton } from './util.js';
import { fleetPage } from './fleet.js';
import { devicePage } from './device.js';
import { systemPage } from './system.js';

const data = pageData();
tzButton();
localizeTimes();
switch (document.body.dataset.page) {
  case 'fleet': fleetPage(data); break;
  case 'device': devicePage(data); break;
  case 'system': systemPage(data); break;
}
